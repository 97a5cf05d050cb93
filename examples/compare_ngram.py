"""Compare n-gram speculation with the baseline on a few bundled prompts, from Python.

    .venv/bin/python examples/compare_ngram.py

Runs the engine twice (about a minute each on a 2-core CPU) and prints the
speedup as Spec-Bench computes it: the ratio of mean per-request token rates.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import specdec

COMMON = [
    "benchmark.categories=[code_editing, extraction]",
    "benchmark.limit=4",
    "generation.max_tokens=64",
    "engine.enforce_eager=true",
    "sinks=[log]",
]


def main() -> None:
    """Run the baseline and ngram, then print what changed."""
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for strategy in ("none", "ngram"):
            config = specdec.load_config(overrides=[*COMMON, f"strategy.name={strategy}"])
            results[strategy] = specdec.run_experiment(config, Path(tmp) / strategy)
    base, ngram = results["none"].summary, results["ngram"].summary
    spec = ngram.engine_spec
    print(f"baseline: {base.overall.tokens_per_s_mean:.1f} tokens/s per request")
    print(f"ngram:    {ngram.overall.tokens_per_s_mean:.1f} tokens/s per request")
    print(f"speedup:  {ngram.overall.tokens_per_s_mean / base.overall.tokens_per_s_mean:.2f}x")
    if spec is not None:
        print(f"acceptance rate {spec.acceptance_rate:.2f}, "
              f"mean acceptance length {spec.mean_acceptance_length:.2f}")


# vLLM starts its workers with `spawn`: the entry point must be guarded.
if __name__ == "__main__":
    main()
