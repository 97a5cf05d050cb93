"""What specdec's instrument costs: one workload through bare vLLM, specdec-run and a batch item.

The workload: a few single-turn prompts of the sample benchmark on the bundled
model, sequential (one request at a time), eager, greedy, without speculation
and with ngram.  Each round runs it three ways, each in a fresh process:

- (a) bare: a vLLM script inside this file that imports nothing from specdec
  (vLLM's defaults, the same model, dtype, length, memory share and
  speculative_config; a warm-up request, then the prompts one at a time);
- (b) run: ``specdec-run`` with the same settings;
- (c) batch: ``specdec batch`` with both configurations (its items).

and measures output tokens per second of the timed loop (warm-up excluded): the
bare script with its own clock around the loop, specdec with ``metrics.json``'s
``throughput_tokens_per_s`` (output tokens over the measured run's wall clock).
The arms run interleaved: in each round, each strategy's three arms run back
to back (strategies and arms in an order shuffled with a seeded RNG), so the
machine's drift between the members of a pair stays small and favours none.  Per strategy
it prints the ratios a/b and a/c: their median over rounds and a 95% bootstrap
interval of the mean log ratio over rounds (``scipy.stats.bootstrap``).

Target (issue 13): both intervals contain 1 and both medians are at most 1.02.

    .venv/bin/python benchmarks/overhead.py                  # 4 rounds, 6 prompts
    .venv/bin/python benchmarks/overhead.py --rounds 6 --prompts 8 --max-tokens 64
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
from typing import Any

from workload import ratio_interval, sample_prompts, throughput

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

BARE = r"""
import json, sys, time
from vllm import LLM, SamplingParams

spec = json.loads(sys.argv[1])
llm = LLM(model=spec["model"], dtype=spec["dtype"], enforce_eager=True,
          max_model_len=spec["max_model_len"], seed=0,
          gpu_memory_utilization=spec["memory"],
          speculative_config=spec["speculative_config"])
tokenizer = llm.get_tokenizer()
params = SamplingParams(max_tokens=spec["max_tokens"], temperature=0.0)
def prompt_ids(text):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                        add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # newer transformers: a dict

prompts = [{"prompt_token_ids": prompt_ids(p)} for p in spec["prompts"]]
llm.generate([{"prompt_token_ids": prompts[0]["prompt_token_ids"]}],
             SamplingParams(max_tokens=8, temperature=0.0), use_tqdm=False)
tokens = 0
start = time.perf_counter()
for prompt in prompts:
    out = llm.generate([prompt], params, use_tqdm=False)[0]
    tokens += len(out.outputs[0].token_ids)
elapsed = time.perf_counter() - start
print("RESULT", json.dumps({"tokens": tokens, "elapsed_s": elapsed,
                            "tokens_per_s": tokens / elapsed}), flush=True)
"""

STRATEGIES = {
    "none": {"name": "none"},
    "ngram": {"name": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2,
              "prompt_lookup_max": 4},
}


def _experiment(strategy: str, bench: Path, args: argparse.Namespace) -> str:
    return json.dumps({
        "model": "smollm2-135m",
        "strategy": STRATEGIES[strategy],
        "benchmark": {"path": str(bench), "format": "prompts"},
        "generation": {"max_tokens": args.max_tokens},
        "engine": {"enforce_eager": True, "dtype": args.dtype, "max_model_len": 2048},
        "mode": "sequential",
        "sinks": ["log"],
    })


def _bare(prompts: list[dict[str, str]], args: argparse.Namespace,
          model_path: str, speculative_config: dict[str, Any] | None) -> float:
    spec = {"model": model_path, "dtype": args.dtype, "max_model_len": 2048, "memory": 0.3,
            "max_tokens": args.max_tokens, "prompts": [p["prompt"] for p in prompts],
            "speculative_config": speculative_config}
    command = [sys.executable, "-c", BARE, json.dumps(spec)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)  # noqa: S603
    # vLLM logs to stdout too: the result is the line the script marks.
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    return float(result["tokens_per_s"])


def _resolved(work: Path, bench: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Model path and speculative_config per strategy, as specdec resolves them (no engine)."""
    from specdec.config import config_from_mapping  # noqa: PLC0415 - the driver may use specdec
    from specdec.runner import prepare_run  # noqa: PLC0415

    out: dict[str, Any] = {}
    for strategy in STRATEGIES:
        config = work / f"{strategy}.json"
        config.write_text(_experiment(strategy, bench, args))
        prepared = prepare_run(config_from_mapping(json.loads(config.read_text())))
        out[strategy] = (str(prepared.model_path), prepared.speculative_config)
    return out


def _arm(arm: str, strategy: str, *, round_: int, work: Path, prompts: list[dict[str, str]],
         resolved: dict[str, Any], args: argparse.Namespace) -> float:
    """One arm of one strategy in a fresh process: its output tokens per second."""
    if arm == "bare":
        return _bare(prompts, args, *resolved[strategy])
    out = work / f"{arm}-{strategy}-{round_}"
    config = str(work / f"{strategy}.json")
    if arm == "run":
        command = [str(BIN / "specdec-run"), "--config", config, "--output-dir", str(out)]
    else:  # a batch of this one item
        command = [str(BIN / "specdec"), "batch", "--configs", config, "--output-base", str(out)]
        out = out / strategy
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)  # noqa: S603
    return throughput(out)


def main() -> int:
    """Run the rounds and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="specdec-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    prompts = sample_prompts(args.prompts)
    bench = work / "bench.jsonl"
    bench.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    resolved = _resolved(work, bench, args)
    rng = random.Random(args.seed)  # noqa: S311 - an order, not a secret
    rates: dict[tuple[str, str], list[float]] = {}
    started = time.perf_counter()
    for round_ in range(args.rounds):
        # Each strategy's three arms run back to back, so a pair is at most two engine
        # starts apart and the machine's drift between them stays small.
        strategies = list(STRATEGIES)
        rng.shuffle(strategies)
        for strategy in strategies:
            arms = ["bare", "run", "batch"]
            rng.shuffle(arms)
            for arm in arms:
                rates.setdefault((strategy, arm), []).append(
                    _arm(arm, strategy, round_=round_, work=work, prompts=prompts,
                         resolved=resolved, args=args))
        print(f"round {round_ + 1}/{args.rounds} done after "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(f"{args.rounds} rounds, {args.prompts} prompts, {args.max_tokens} tokens, "
          f"{args.dtype}, eager, sequential; output tokens/s of the timed loop")
    for strategy in STRATEGIES:
        bare = rates[(strategy, "bare")]
        print(f"{strategy}: bare " + " ".join(f"{r:.1f}" for r in bare))
        for arm in ("run", "batch"):
            other = rates[(strategy, arm)]
            ratios = [a / b for a, b in zip(bare, other, strict=True)]
            low, high = ratio_interval(ratios)
            print(f"  {arm:5s} " + " ".join(f"{r:.1f}" for r in other)
                  + f"  bare/{arm}: median {statistics.median(ratios):.3f}, "
                  f"95% interval of the mean [{low:.3f}, {high:.3f}]")
    print(f"runs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
