"""This machine's run-to-run noise, and how many repeats a study needs for +-5% on a speedup.

Runs a real study with ``specdec study`` (so what it measures is what a user's
study gets): the baseline, ngram and the truncated draft, plus the A/A check (a
second baseline), each ``--repeats`` times in interleaved seeded rounds, on
single-turn prompts of the sample benchmark spread over its categories (bundled
model, eager, greedy, one request at a time).  Then, from the study's own report
(:func:`specdec.report.build_report`), per setting against the baseline:

- the speedup of every round (repeat r against the baseline's repeat r) and their
  spread, (max - min) / median, and the standard deviation ``s`` of their logs:
  the run-to-run noise a one-run verdict carries;
- the study's interval over all rounds (the two-level bootstrap, "across runs");
- the repeats needed for an interval of +-5%, two ways: from ``s``, the smallest n
  with ``t(0.975, n - 1) * s / sqrt(n) <= ln(1.05)`` (a t interval of the mean log
  speedup); and from the study's interval, whose half-width shrinks as
  ``1 / sqrt(repeats)``.  The larger of the two is the figure to plan with: with
  few repeats a percentile bootstrap is too narrow, which the t interval is not.

The A/A row (baseline against baseline) shows the noise with nothing else in
it; its interval should contain 1.

    .venv/bin/python benchmarks/noise.py                     # 4 repeats, 16 prompts: ~20 min
    .venv/bin/python benchmarks/noise.py --repeats 3 --prompts 8 --keep results/noise
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from workload import sample_prompts

from specdec.intervals import Interval, paired_speedup
from specdec.report import OVERALL, Report, Setting, build_report, paired_repeats

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET = 0.05
"""The interval's half-width to plan for, relative to the speedup."""
MAX_REPEATS = 1000


def _study(bench: Path, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": "noise",
        "benchmark": {"path": str(bench), "format": "prompts"},
        "models": ["smollm2-135m"],
        "base": {"generation": {"max_tokens": args.max_tokens},
                 "engine": {"enforce_eager": True, "dtype": args.dtype},
                 "mode": "sequential"},
        "strategies": [
            {"name": "none"},
            {"name": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2,
             "prompt_lookup_max": 4},
            {"name": "draft_model", "model": "smollm2-135m-draft", "num_speculative_tokens": 3},
        ],
        "repeats": args.repeats,
        "aa_check": True,
        "seed": args.seed,
    }


def repeats_for_t(log_sd: float, target: float = TARGET) -> int:
    """Smallest n whose t interval of the mean log speedup is within +-``target``."""
    if log_sd == 0:
        return 2
    bound = math.log1p(target)
    for n in range(2, MAX_REPEATS):
        if stats.t.ppf(0.975, n - 1) * log_sd / math.sqrt(n) <= bound:
            return n
    return MAX_REPEATS


def repeats_for_interval(interval: Interval, repeats: int, target: float = TARGET) -> int:
    """Repeats for +-``target``, scaling the interval's half-width as 1/sqrt(repeats)."""
    half = max(interval.high / interval.estimate - 1, 1 - interval.low / interval.estimate)
    return max(1, math.ceil(repeats * (half / target) ** 2))


def _per_round(setting: Setting, baseline: Setting) -> list[float]:
    out = []
    for run, base in paired_repeats(setting, baseline):
        one = paired_speedup([run.sample], [base.sample], "spec_bench")
        if one is not None:
            out.append(one.estimate)
    return out


def _print(report: Report, repeats: int) -> None:
    by_name = {s.name: s for s in report.settings}
    overall = {c.setting: c for c in report.comparisons if c.category == OVERALL}
    for setting in report.settings:
        if setting.is_baseline:
            baseline_rates = setting.values(OVERALL, "tokens_per_s_mean")
            spread = (max(baseline_rates) - min(baseline_rates)) / statistics.median(
                baseline_rates)
            print("baseline tokens/s per request, per round: "
                  + " ".join(f"{r:.1f}" for r in baseline_rates)
                  + f"  (spread {spread:.1%} of the median)")
    for name, comp in overall.items():
        setting = by_name[name]
        baseline = by_name.get(report.baselines.get(name, ""))
        if baseline is None or setting is baseline:
            continue
        rounds = _per_round(setting, baseline)
        label = setting.display_name()
        iv = comp.speedup_spec_bench_interval
        print(f"\n{label}")
        print("  speedup per round: " + " ".join(f"{r:.3f}" for r in rounds))
        if len(rounds) >= 2:  # noqa: PLR2004 - a spread needs two
            logs = np.log(rounds)
            log_sd = float(np.std(logs, ddof=1))
            print(f"  spread {(max(rounds) - min(rounds)) / statistics.median(rounds):.1%} of "
                  f"the median; sd of log speedup {log_sd:.3f}")
            print(f"  repeats for +-{TARGET:.0%} (t interval of the rounds): "
                  f"{repeats_for_t(log_sd)}")
        if iv is not None:
            print(f"  study interval ({iv.kind}): {iv.estimate:.3f}x "
                  f"[{iv.low:.3f}, {iv.high:.3f}]; repeats for +-{TARGET:.0%} by its "
                  f"half-width: {repeats_for_interval(iv, repeats)}")
        tp = comp.speedup_throughput_interval
        if tp is not None:
            print(f"  throughput speedup: {tp.estimate:.3f}x [{tp.low:.3f}, {tp.high:.3f}]")
        if comp.mean_acceptance_length is not None:
            print(f"  mean acceptance length {comp.mean_acceptance_length:.2f}")
    for warning in report.warnings:
        print(f"\nwarning: {warning}")


def main() -> int:
    """Run the study and print the noise figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="run the study in this folder (resumable)")
    parser.add_argument("--report-only", action="store_true",
                        help="do not run: print the figures of the study in --keep")
    args = parser.parse_args()
    if args.repeats < 2:  # noqa: PLR2004 - noise between runs needs two
        parser.error("--repeats must be at least 2: run-to-run noise needs two runs")
    work = args.keep or Path(tempfile.mkdtemp(prefix="specdec-noise-"))
    work.mkdir(parents=True, exist_ok=True)
    batch = work / "study"
    if not args.report_only:
        bench = work / "bench.jsonl"
        bench.write_text("".join(json.dumps(p) + "\n" for p in sample_prompts(args.prompts)))
        study = work / "noise.json"
        study.write_text(json.dumps(_study(bench, args), indent=1))
        started = time.perf_counter()
        done = subprocess.run([str(BIN / "specdec"), "study", str(study),  # noqa: S603
                               "--output-base", str(batch)], check=False, cwd=ROOT)
        print(f"study finished in {time.perf_counter() - started:.0f} s "
              f"(exit {done.returncode})", file=sys.stderr)
    if args.report_only:  # the flags need not match how that study was run
        print(f"the study in {batch}; Spec-Bench speedups against the same round's baseline")
    else:
        print(f"{args.repeats} interleaved rounds, {args.prompts} prompts, {args.max_tokens} "
              f"tokens, {args.dtype}, eager, sequential; Spec-Bench speedups (ratio of mean "
              "per-request rates) against the baseline of the same round")
    report = build_report([batch])
    _print(report, max((len(x.runs) for x in report.settings), default=args.repeats))
    print(f"\nstudy in {batch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
