"""The benchmarks' shared workload (sample-benchmark prompts) and the interval of a ratio."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def sample_prompts(count: int) -> list[dict[str, str]]:
    """The first turn of ``count`` sample-benchmark questions, spread over categories.

    Round-robin over the categories in file order, so a few prompts already cover
    several kinds of text; rows in the benchmark's ``prompts`` format.
    """
    rows = [json.loads(line) for line in
            (ROOT / "data" / "sample_benchmark.jsonl").read_text().splitlines() if line.strip()]
    by_category: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    chosen: list[dict[str, str]] = []
    while len(chosen) < count and any(by_category.values()):
        for queue in by_category.values():
            if queue and len(chosen) < count:
                row = queue.pop(0)
                chosen.append({"id": str(row["question_id"]), "category": row["category"],
                               "prompt": row["turns"][0]})
    return chosen


def ratio_interval(ratios: list[float]) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the geometric mean of paired ratios (one per round)."""
    logs = np.log(np.asarray(ratios))
    if np.ptp(logs) == 0:  # all rounds alike: the bootstrap has nothing to resample
        return ratios[0], ratios[0]
    result = stats.bootstrap((logs,), np.mean, confidence_level=0.95, n_resamples=9999,
                             method="percentile", random_state=np.random.default_rng(0))
    low, high = result.confidence_interval
    return math.exp(low), math.exp(high)


def throughput(folder: Path) -> float:
    """A finished run's output tokens per second over its measured wall clock (metrics.json)."""
    header = json.loads((folder / "metrics.json").read_text())
    return float(header["summary"]["throughput_tokens_per_s"])
