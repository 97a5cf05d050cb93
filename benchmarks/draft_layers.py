"""Measure how many layers the bundled truncated draft should keep.

For each N, keep the first N of the bundled model's 30 layers (with the final
norm and tied head), run the draft_model strategy on the sample benchmark with
the real engine, and record acceptance and speed against the baseline.
Writes a markdown table to stdout and JSON to --output.

    .venv/bin/python benchmarks/draft_layers.py --layers 4 8 12 16 20 24 --max-tokens 64
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import orjson

from specdec import load_config, models, run_experiment


def main() -> None:
    """Run the sweep."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 8, 12, 16, 20])
    parser.add_argument("--limit", type=int, default=None, help="first N prompts (default all)")
    parser.add_argument("--mode", choices=["batch", "sequential"], default="batch")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=3, help="num_speculative_tokens")
    parser.add_argument("--output", type=Path, default=Path("results/draft_layers.json"))
    args = parser.parse_args()
    base = models.prepare(models.BASE_ALIAS)
    common = [f"generation.max_tokens={args.max_tokens}", f"mode={args.mode}",
              "engine.enforce_eager=true", "sinks=[]"]
    if args.limit is not None:
        common.append(f"benchmark.limit={args.limit}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        baseline = run_experiment(load_config(None, common), Path(tmp) / "none")
        base_rate = baseline.summary.overall.tokens_per_s_mean
        for n in args.layers:
            draft = Path(tmp) / f"draft-{n}"
            draft.mkdir()
            models.truncate(base, draft, n)
            config = load_config(None, [*common, "strategy.name=draft_model",
                                        f"strategy.model={draft}",
                                        f"strategy.num_speculative_tokens={args.k}"])
            result = run_experiment(config, Path(tmp) / f"run-{n}")
            spec = result.summary.engine_spec
            assert spec is not None
            rate = result.summary.overall.tokens_per_s_mean
            rows.append({"layers": n, "acceptance_rate": spec.acceptance_rate,
                         "mean_acceptance_length": spec.mean_acceptance_length,
                         "acceptance_per_position": spec.acceptance_per_position,
                         "tokens_per_s_mean": rate, "baseline_tokens_per_s_mean": base_rate,
                         "speedup": rate / base_rate})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    print("| layers | acceptance rate | mean acceptance length | per position | tok/s | speedup |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        pos = ", ".join(f"{p:.2f}" for p in r["acceptance_per_position"])
        print(f"| {r['layers']} | {r['acceptance_rate']:.3f} | {r['mean_acceptance_length']:.2f}"
              f" | {pos} | {r['tokens_per_s_mean']:.1f} | {r['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
