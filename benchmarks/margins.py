"""How far scoring-pass (prefill) margins are from decode-time margins at the same positions.

The lossless check classifies a divergence by the baseline's top-2
log-probability margin there.  A batch reads that margin in a scoring pass
after its timed runs: the baseline's own prompt and output prefilled at once
(``Engine.score``).  Decoding computed the same distribution one token at a
time, with other kernels and shapes, so the two differ by rounding.  This
measures by how much, at every output position of a few prompts, on the
bundled model with the offline engine (eager), for each dtype:

    .venv/bin/python benchmarks/margins.py --limit 8 --max-tokens 64

It prints, per dtype, the positions compared and the largest, p99 and median
absolute difference (nats), the largest where either margin is within 1 nat of
the near-tie threshold, and the positions the two would classify differently
at that threshold (decode-time / prefill margin).
"""

from __future__ import annotations

import argparse
import statistics

import attrs

from specdec import load_config
from specdec.benchmarks.loader import default_benchmark_path, load_benchmark
from specdec.engines.vllm_offline import VllmOfflineEngine
from specdec.interfaces import ScoreRequest
from specdec.models import resolve_model
from specdec.records import RequestRecord
from specdec.study import NEAR_TIE_THRESHOLD


def differences(dtype: str, limit: int, max_tokens: int) -> tuple[list[float], list[float]]:
    """(decode-time margins, prefill margins) at every output position, in order."""
    config = load_config(None, [f"engine.dtype={dtype}", "engine.enforce_eager=true",
                                "generation.logprobs=2", f"generation.max_tokens={max_tokens}",
                                "sinks=[]"])
    conversations = [attrs.evolve(c, turns=c.turns[:1])
                     for c in load_benchmark(default_benchmark_path(), limit=limit)]
    engine = VllmOfflineEngine(config, resolve_model(config.model), None)
    engine.start()
    try:
        records: list[RequestRecord] = []
        engine.run(conversations, records.append)
        requests = []
        decoded: list[float] = []
        for conversation, record in zip(conversations, records, strict=True):
            (turn,) = record.turns
            prompt = engine.prompt_token_ids(conversation, [])
            output = turn.output_token_ids
            requests.append(ScoreRequest((*prompt, *output),
                                         tuple(len(prompt) + i for i in range(len(output)))))
            decoded += turn.logprob_margins
        prefilled = [s.top_logprobs[0] - s.top_logprobs[1]
                     for result in engine.score(requests) for s in result.scores]
    finally:
        engine.close()
    return decoded, prefilled


def main() -> None:
    """Measure each dtype and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--limit", type=int, default=8, help="first N prompts (first turns)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threshold", type=float, default=NEAR_TIE_THRESHOLD)
    args = parser.parse_args()
    print("| dtype | positions | largest | p99 | median | largest near a tie | "
          "classified differently |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for dtype in args.dtypes:
        decoded, prefilled = differences(dtype, args.limit, args.max_tokens)
        pairs = list(zip(decoded, prefilled, strict=True))
        diffs = sorted(abs(a - b) for a, b in pairs)
        p99 = diffs[min(len(diffs) - 1, int(0.99 * len(diffs)))]
        # Near a tie: either margin within 1 nat of the threshold, where a difference matters.
        near = [(a, b) for a, b in pairs if min(a, b) <= args.threshold + 1.0]
        flips = [(a, b) for a, b in pairs if (a <= args.threshold) != (b <= args.threshold)]
        largest_near = max((abs(a - b) for a, b in near), default=0.0)
        shown = ", ".join(f"{a:.3f}/{b:.3f}" for a, b in flips)
        print(f"| {dtype} | {len(diffs)} | {diffs[-1]:.4f} | {p99:.4f} | "
              f"{statistics.median(diffs):.4f} | {largest_near:.4f} (of {len(near)}) | "
              f"{len(flips)} (decode/prefill: {shown or 'none'}) |", flush=True)

if __name__ == "__main__":
    main()
