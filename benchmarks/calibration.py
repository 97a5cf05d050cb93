"""Which form of the step time fits this machine: calibration runs, every form's held-out error.

Runs, each as its own ``specdec-run`` process (what a study's item is), on
single-turn prompts of the sample benchmark (bundled model, eager, greedy, one
request at a time, a small token budget):

- the baseline twice (first and last, so that the machine's drift shows up as
  the baselines' residuals),
- ngram at each ``--ks`` (prompt lookup 2 to 4, which matches on short prompts),
- the truncated draft model at each ``--ks``,

in between the baselines in an order shuffled with a seeded RNG.  Then
:func:`specdec.costmodel.calibrate_folders` fits every candidate form of
``docs/prediction.md`` and tests it by predicting each run from a fit
over the others; this prints each form's held-out error (root mean square of
the runs' residuals, measured / predicted - 1, of their decode time), its
coefficients or why it could not be tested, the chosen form and each run's
residuals, and writes ``calibration.json`` beside the runs.

Three k per strategy and two baselines are what every form needs to be tested
(a form with a per-step overhead per drafter loses one of its two k per strategy
when one is held out).  The held-out errors can tell forms apart only where
they differ by more than the run-to-run noise (about 5% per run on this
machine, docs/studies.md): read them beside the baselines' residuals.

    .venv/bin/python benchmarks/calibration.py                        # 8 runs: ~15 min
    .venv/bin/python benchmarks/calibration.py --ks 1 2 3 4 --prompts 12 --keep results/cal
    .venv/bin/python benchmarks/calibration.py --report-only results/cal
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from workload import sample_prompts

from specdec.costmodel import Calibration, calibrate_folders, write_calibration
from specdec.run_folder import is_finished

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

STRATEGIES: dict[str, dict[str, Any]] = {
    "ngram": {"name": "ngram", "prompt_lookup_min": 2, "prompt_lookup_max": 4},
    "draft_model": {"name": "draft_model", "model": "smollm2-135m-draft"},
}


def _experiment(strategy: dict[str, Any], bench: Path, args: argparse.Namespace) -> str:
    return json.dumps({
        "model": "smollm2-135m",
        "strategy": strategy,
        "benchmark": {"path": str(bench), "format": "prompts"},
        "generation": {"max_tokens": args.max_tokens},
        "engine": {"enforce_eager": True, "dtype": args.dtype, "max_model_len": 2048},
        "mode": "sequential",
        "sinks": ["log"],
    })


def _plan(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The runs, by folder name: a baseline, the speculative runs shuffled, a baseline."""
    speculative = [(f"{name}-k{k}", {**options, "num_speculative_tokens": k})
                   for name, options in STRATEGIES.items() for k in args.ks]
    random.Random(args.seed).shuffle(speculative)  # noqa: S311 - an order, not a secret
    baseline = {"name": "none"}
    return [("none-1", baseline), *speculative, ("none-2", baseline)]


def _run(work: Path, bench: Path, args: argparse.Namespace) -> None:
    plan = _plan(args)
    started = time.perf_counter()
    for index, (name, strategy) in enumerate(plan, start=1):
        out = work / name
        if is_finished(out):
            continue
        config = work / f"{name}.json"
        config.write_text(_experiment(strategy, bench, args))
        command = [str(BIN / "specdec-run"), "--config", str(config), "--output-dir", str(out)]
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)  # noqa: S603
        print(f"run {index}/{len(plan)} ({name}) done after "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)


def _print(calibration: Calibration) -> None:
    for fit in calibration.fits:
        print(f"batch size {fit.batch_size}: chosen form {fit.form}")
        for form in fit.forms:
            error = "-" if form.held_out_error is None else f"{form.held_out_error:.2%}"
            print(f"\n  {form.name}: {form.formula}; held-out error {error}")
            for name, value in form.coefficients.items():
                print(f"    {name:32s} {value * 1000:8.3f} ms")
            if form.note:
                print(f"    not testable: {form.note}")
        print("\n  run                       steps   decode s  residual  held-out residual")
        for run in fit.runs:
            print(f"  {Path(run.folder).name:24s} {run.steps:6d} {run.decode_s:10.2f} "
                  f"{run.residual:+9.2%} {run.held_out_residual:+18.2%}")
        print("  TTFT over the baseline's: " + ", ".join(
            f"{key} {ratio:.2f}" for key, ratio in fit.ttft_ratio.items()))


def main() -> int:
    """Run the calibration set (unless --report-only) and print every form's fit."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder (and resume)")
    parser.add_argument("--report-only", type=Path, metavar="FOLDER",
                        help="fit the finished runs in FOLDER without running anything")
    args = parser.parse_args()
    if args.report_only:
        work = args.report_only
    else:
        work = args.keep or Path(tempfile.mkdtemp(prefix="specdec-calibration-"))
        work.mkdir(parents=True, exist_ok=True)
        bench = work / "bench.jsonl"
        bench.write_text("".join(json.dumps(p) + "\n" for p in sample_prompts(args.prompts)))
        _run(work, bench, args)
    folders = sorted(f for f in work.iterdir() if f.is_dir() and is_finished(f))
    calibration = calibrate_folders(folders)
    _print(calibration)
    write_calibration(work / "calibration.json", calibration)
    print(f"\nruns and calibration.json in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
