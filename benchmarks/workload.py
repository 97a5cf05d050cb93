"""The benchmarks' shared workload: single-turn prompts of the sample benchmark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
