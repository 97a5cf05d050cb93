"""How fast `specdec report` reads and reports large runs.

Builds two run folders (a baseline and an ngram run) of N request records each
through the run-folder module, as a real run writes them: 128 output tokens per
request, the top-2 log-probability margins the lossless check reads, per-step
speculative counts.  Records are copies of a real run's when --from names one,
otherwise synthetic ones of the same shape.  Then, in a fresh process each,
times reading the runs (summary and records) and `specdec report`'s work
(build_report + write_report, plots included) and prints wall time and peak
memory, also per 100,000 records.

Target (issue 11): at most 2 s and 1 GB per 100,000 records.

    .venv/bin/python benchmarks/report_scale.py                 # 2 x 100,000 records
    .venv/bin/python benchmarks/report_scale.py --requests 20000 --from results/run
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs

from specdec import run_folder
from specdec.config import load_config
from specdec.metrics import summarise
from specdec.records import RequestRecord, SpecStats, TurnRecord

TOKENS = 128


def _synthetic(index: int, rng: random.Random) -> RequestRecord:
    accepted = [rng.randrange(4) for _ in range(TOKENS // 3)]
    spec = SpecStats(len(accepted), 3 * len(accepted), sum(accepted), (30, 20, 10),
                     tuple(accepted.count(j) for j in range(4)), tuple(accepted))
    turn = TurnRecord(
        prompt="Write a Python function that checks whether a number is prime. " * 2,
        output=" ".join(rng.choice(("the", "number", "prime", "def", "return")) for _ in
                        range(TOKENS)),
        prompt_tokens=40, output_tokens=TOKENS, ttft_s=0.04 + rng.random() / 100,
        decode_s=2.0 + rng.random(), finish_reason="length",
        output_token_ids=tuple(rng.randrange(49152) for _ in range(TOKENS)),
        spec=spec,
        # bfloat16 log-probabilities: margins are multiples of 1/8 and so are short in JSON.
        logprob_margins=tuple(rng.randrange(80) / 8 for _ in range(TOKENS)),
    )
    return RequestRecord(f"q{index}", ("code", "math", "qa", "writing")[index % 4], (turn,))


def _templates(source: Path | None) -> list[RequestRecord]:
    if source is not None:
        return run_folder.read_records(source)
    rng = random.Random(0)  # noqa: S311 - synthetic data, not secrets
    return [_synthetic(i, rng) for i in range(500)]


def _write_run(folder: Path, strategy: str, count: int, templates: list[RequestRecord],
               *, spec: bool) -> None:
    config = load_config(None, [f"strategy.name={strategy}", "sinks=[log]"])
    writer = run_folder.RunWriter(folder)
    writer.claim(config)
    writer.start(config, {"benchmark": "report_scale"})
    records = []
    for i in range(count):
        template = templates[i % len(templates)]
        turns = template.turns if spec else tuple(attrs.evolve(t, spec=None)
                                                   for t in template.turns)
        record = RequestRecord(f"{template.id}-{i}", template.category, turns)
        writer.append(record)
        records.append(record)
    counters = None
    if spec:
        counters = SpecStats(*(sum(getattr(t.spec, f) for r in records for t in r.turns
                                   if t.spec) for f in
                               ("num_drafts", "num_draft_tokens", "num_accepted_tokens")))
    summary = summarise(records, sum(r.walltime_s for r in records), counters)
    writer.finish(summary, records)


MEASURE = """
import resource, sys, time
from pathlib import Path
start = time.perf_counter()
what, *folders = sys.argv[1:]
paths = [Path(f) for f in folders]
if what == "read":
    from specdec import run_folder
    for path in paths:
        run_folder.read_summary(path)
        run_folder.read_records(path)
else:
    from specdec.report import build_report
    from specdec.report_files import write_report
    report = build_report(paths)
    write_report(report, paths[0].parent / "report")
    assert all(r.passed for r in report.lossless.values()), report.lossless
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{elapsed:.3f} {peak:.0f}")
"""


def _measure(what: str, folders: list[Path]) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", MEASURE, what, *map(str, folders)],  # noqa: S603
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    """Build the runs, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000, help="records per run")
    parser.add_argument("--from", dest="source", type=Path,
                        help="copy this run folder's records instead of synthetic ones")
    parser.add_argument("--keep", type=Path, help="build the runs here and keep them")
    args = parser.parse_args()
    templates = _templates(args.source)
    with tempfile.TemporaryDirectory(prefix="report-scale-") as tmp:
        base = args.keep or Path(tmp)
        started = time.perf_counter()
        folders = [base / "baseline", base / "ngram"]
        _write_run(folders[0], "none", args.requests, templates, spec=False)
        _write_run(folders[1], "ngram", args.requests, templates, spec=True)
        size = sum(p.stat().st_size for f in folders for p in f.iterdir()) / 1e6
        print(f"built 2 runs x {args.requests} records ({size:.0f} MB on disk) in "
              f"{time.perf_counter() - started:.1f} s")
        per = 100_000 / (2 * args.requests)
        for what in ("read", "report"):
            seconds, peak_mb = _measure(what, folders)
            print(f"{what:>6}: {seconds:6.2f} s, peak {peak_mb:6.0f} MB  "
                  f"(per 100,000 records: {seconds * per:.2f} s, {peak_mb * per:.0f} MB)")
    builder_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"target per 100,000 records: 2 s, 1024 MB; building peaked at {builder_mb:.0f} MB")


if __name__ == "__main__":
    main()
