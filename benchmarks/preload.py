"""Does preloading tcmalloc and Intel's OpenMP make vLLM faster on this CPU?

vLLM's CPU documentation recommends ``LD_PRELOAD`` of tcmalloc and ``libiomp5``
(its worker warns when they are missing).  This measures it, paired: each round
runs one workload (single-turn sample-benchmark prompts, bundled model, eager,
greedy, no speculation) through ``specdec-run`` four ways, each in a fresh
process and in an order shuffled per round: one request at a time and all at
once (``--mode batch``), each with and without the preload.  Per mode it prints
the ratio preloaded / plain of output tokens per second (``metrics.json``'s
``throughput_tokens_per_s``) for every round, their median and a 95% bootstrap
interval of their geometric mean.  Issue 15's rule: adopt the preload only if it
pays at least 5% consistently (the interval above 1.05).

    apt-get install libtcmalloc-minimal4             # Debian; libiomp5.so ships in the venv
    .venv/bin/python benchmarks/preload.py           # 4 rounds, 8 prompts: ~15 min
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workload import ROOT, ratio_interval, sample_prompts, throughput

BIN = ROOT / ".venv" / "bin"
TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
IOMP = ROOT / ".venv" / "lib" / "libiomp5.so"
MODES = ("sequential", "batch")
PAYS = 1.05
"""Issue 15's bar: adopt the preload only if its interval lies above this."""


def _run(mode: str, *, preload: bool, out: Path, bench: Path, args: argparse.Namespace) -> float:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = f"{TCMALLOC}:{IOMP}"
    command = [str(BIN / "specdec-run"), "--benchmark", str(bench), "--mode", mode,
               "--output-dir", str(out), "--set", f"generation.max_tokens={args.max_tokens}",
               "--set", "engine.enforce_eager=true"]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT, env=env)  # noqa: S603
    return throughput(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder")
    args = parser.parse_args()
    for lib in (TCMALLOC, IOMP):
        if not lib.is_file():
            sys.exit(f"preload: {lib} is missing (tcmalloc: apt-get install libtcmalloc-minimal4)")
    work = args.keep or Path(tempfile.mkdtemp(prefix="specdec-preload-"))
    work.mkdir(parents=True, exist_ok=True)
    bench = work / "bench.jsonl"
    bench.write_text("".join(json.dumps(p) + "\n" for p in sample_prompts(args.prompts)))
    rng = random.Random(args.seed)  # noqa: S311 - an order, not a secret
    rates: dict[tuple[str, bool], list[float]] = {}
    started = time.perf_counter()
    for round_ in range(args.rounds):
        arms = [(mode, preload) for mode in MODES for preload in (False, True)]
        rng.shuffle(arms)
        for mode, preload in arms:
            out = work / f"{mode}-{'preload' if preload else 'plain'}-{round_}"
            rate = _run(mode, preload=preload, out=out, bench=bench, args=args)
            rates.setdefault((mode, preload), []).append(rate)
        print(f"round {round_ + 1}/{args.rounds} done after "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(f"{args.rounds} rounds, {args.prompts} prompts, {args.max_tokens} tokens, eager, "
          f"no speculation; output tokens/s; LD_PRELOAD={TCMALLOC}:{IOMP}")
    for mode in MODES:
        plain, pre = rates[(mode, False)], rates[(mode, True)]
        ratios = [p / q for p, q in zip(pre, plain, strict=True)]
        low, high = ratio_interval(ratios)
        print(f"{mode}: plain " + " ".join(f"{r:.1f}" for r in plain)
              + " | preloaded " + " ".join(f"{r:.1f}" for r in pre))
        print(f"  preloaded/plain: median {statistics.median(ratios):.3f}, 95% interval of the "
              f"geometric mean [{low:.3f}, {high:.3f}]; pays 5% consistently: "
              f"{'yes' if low >= PAYS else 'no'}")
    print(f"runs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
