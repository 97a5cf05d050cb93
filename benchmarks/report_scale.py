"""How fast `specdec report` reads and reports large runs.

Builds two run folders (a baseline and an ngram run) of N request records each
through the run-folder module, as a real run writes them: 128 output tokens per
request, the top-2 log-probability margins the lossless check reads, per-step
speculative counts.  Records are copies of a real run's when --from names one,
otherwise synthetic ones of the same shape.  Then, in a fresh process each
(start-up and imports included), times

- records: reading both runs' summaries and every full record (what export and
  training read), and
- report: `specdec report`'s work (build_report + write_report, plots
  included), which reads the summaries and metrics.json's columns,

and prints wall time and peak memory, also per 100,000 records, twice each: the
first read after building can still wait for the disk, the second reads the
page cache, as a report of an earlier study does.

Target (issue 11): at most 2 s and 1 GB per 100,000 records.

    .venv/bin/python benchmarks/report_scale.py                 # 2 x 100,000 records
    .venv/bin/python benchmarks/report_scale.py --requests 20000 --from results/run
    .venv/bin/python benchmarks/report_scale.py --diverge 0.7    # most texts differ
"""

from __future__ import annotations

import argparse
import os
import random
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
        # bfloat16 log-probabilities: margins are multiples of 1/8 and so are short in JSON;
        # a near-tie halfway, where --diverge flips the token.
        logprob_margins=tuple(0.125 if j == TOKENS // 2 else rng.randrange(80) / 8
                              for j in range(TOKENS)),
    )
    return RequestRecord(f"q{index}", ("code", "math", "qa", "writing")[index % 4], (turn,))


def _templates(source: Path | None) -> list[RequestRecord]:
    if source is not None:
        return run_folder.read_records(source)
    rng = random.Random(0)  # noqa: S311 - synthetic data, not secrets
    return [_synthetic(i, rng) for i in range(500)]


def _diverged(turn: TurnRecord) -> TurnRecord:
    # A near-tie flip halfway through, as bfloat16 verification often makes.
    ids = list(turn.output_token_ids)
    if ids:
        ids[len(ids) // 2] = (ids[len(ids) // 2] + 1) % 49152
    return attrs.evolve(turn, output_token_ids=tuple(ids), output=turn.output + " (flipped)")


def _write_run(folder: Path, strategy: str, count: int, templates: list[RequestRecord],
               *, spec: bool, diverge: float = 0.0) -> None:
    config = load_config(None, [f"strategy.name={strategy}", "sinks=[log]"])
    writer = run_folder.RunWriter(folder)
    writer.claim(config)
    writer.start(config, {"benchmark": "report_scale"})
    records = []
    for i in range(count):
        template = templates[i % len(templates)]
        turns = template.turns if spec else tuple(attrs.evolve(t, spec=None)
                                                   for t in template.turns)
        if spec and (i % 100) < diverge * 100:
            turns = tuple(_diverged(t) for t in turns)
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
if what == "records":
    from specdec import run_folder
    for path in paths:
        run_folder.read_summary(path)
        run_folder.read_records(path)
else:
    from specdec.report import build_report
    from specdec.report_files import write_report
    report = build_report(paths)
    write_report(report, paths[0].parent / "report")
    assert all(r.mismatch == 0 for r in report.lossless.values()), report.lossless
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
    parser.add_argument("--diverge", type=float, default=0.0,
                        help="share of the ngram run's requests whose text differs from the "
                             "baseline's (bfloat16 runs: often most of them); default 0")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only:
        templates = _templates(args.source)
        _write_run(args.keep / "baseline", "none", args.requests, templates, spec=False)
        _write_run(args.keep / "ngram", "ngram", args.requests, templates, spec=True,
                   diverge=args.diverge)
        return
    with tempfile.TemporaryDirectory(prefix="report-scale-") as tmp:
        base = args.keep or Path(tmp)
        started = time.perf_counter()
        folders = [base / "baseline", base / "ngram"]
        # Built in a child: a process started from a large one starts with its
        # peak memory on Linux, which would blur the measurements below.
        build = [sys.executable, __file__, "--build-only", "--requests", str(args.requests),
                 "--keep", str(base), "--diverge", str(args.diverge)]
        if args.source is not None:
            build += ["--from", str(args.source)]
        subprocess.run(build, check=True)  # noqa: S603
        size = sum(p.stat().st_size for f in folders for p in f.iterdir()) / 1e6
        print(f"built 2 runs x {args.requests} records ({size:.0f} MB on disk) in "
              f"{time.perf_counter() - started:.1f} s")
        per = 100_000 / (2 * args.requests)
        os.sync()  # the runs are on disk, as a finished study's are, before timing reads
        for what in ("records", "report"):
            for attempt in ("first", "again"):
                seconds, peak_mb = _measure(what, folders)
                print(f"{what:>7} ({attempt}): {seconds:6.2f} s, peak {peak_mb:6.0f} MB  "
                      f"(per 100,000 records: {seconds * per:.2f} s, {peak_mb * per:.0f} MB)")
    print("target per 100,000 records: 2 s, 1024 MB")


if __name__ == "__main__":
    main()
