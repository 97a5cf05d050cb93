"""Export a specdec run as a Spec-Bench answer file.

Spec-Bench's ``evaluation/speed.py`` and ``evaluation/equal.py`` read answer
files that its ``evaluation/eval.py`` writes: one JSON object per question and
line, sorted by question id,

    {"question_id": ..., "category": ..., "answer_id": ..., "model_id": ...,
     "choices": [{"index": 0, "turns": [answer text per turn],
                  "decoding_steps": [forward steps per turn],
                  "new_tokens": [generated tokens per turn],
                  "wall_time": [seconds per turn],
                  "accept_lengths": [tokens per forward step, all turns in a row]}],
     "tstamp": ...}

``accept_lengths`` is one flat list per choice (Spec-Bench extends it turn after
turn), built by :func:`specdec.metrics.spec_bench_accept_lengths`.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from specdec import run_folder
from specdec.errors import SpecdecError
from specdec.metrics import spec_bench_accept_lengths
from specdec.records import RequestRecord

__all__ = ["export_spec_bench", "load_run_records", "spec_bench_answer"]

load_run_records = run_folder.read_records
"""The request records of a run folder (:func:`specdec.run_folder.read_records`)."""


def _question_id(record_id: str) -> int | str:
    """An all-digit id as an int (as Spec-Bench's question files have), else the string."""
    return int(record_id) if record_id.isascii() and record_id.isdigit() else record_id


def _sort_key(question_id: int | str) -> tuple[int, int, str]:
    # Spec-Bench's reorg_answer_file sorts by question id; ints first, by value.
    if isinstance(question_id, int):
        return (0, question_id, "")
    return (1, 0, question_id)


def spec_bench_answer(record: RequestRecord, model_id: str) -> dict[str, Any]:
    """One question's line of a Spec-Bench answer file (see the module docstring).

    Raises:
        ValueError: as :func:`specdec.metrics.spec_bench_accept_lengths`.
    """
    per_turn = [spec_bench_accept_lengths(t) for t in record.turns]
    choice = {
        "index": 0,
        "turns": [t.output for t in record.turns],
        "decoding_steps": [len(lengths) for lengths in per_turn],
        "new_tokens": [t.output_tokens for t in record.turns],
        "wall_time": [t.walltime_s for t in record.turns],
        "accept_lengths": [n for lengths in per_turn for n in lengths],
    }
    return {
        "question_id": _question_id(record.id),
        "category": record.category,
        "answer_id": uuid.uuid4().hex,
        "model_id": model_id,
        "choices": [choice],
        "tstamp": time.time(),
    }


def export_spec_bench(run_dir: Path, out: Path, *, model_id: str | None = None) -> int:
    """Write a run's records to ``out`` as a Spec-Bench answer file; return its line count.

    One line per question, sorted by question id as Spec-Bench's
    ``reorg_answer_file`` leaves its files, so that ``equal.py`` compares the same
    questions line by line.  ``model_id`` defaults to the run folder's name.
    The parent folder of ``out`` is created; an existing ``out`` is replaced.

    Raises:
        SpecdecError: if ``out`` is a folder, the run folder has no records file, a
            record is invalid,
            two records share a question id, or a turn's speculative counts do
            not list its draft steps.
    """
    if out.is_dir():
        msg = f"{out} is a folder: give the answer file to write (-o FILE.jsonl)"
        raise SpecdecError(msg)
    records = load_run_records(run_dir)
    name = model_id if model_id is not None else run_dir.resolve().name
    answers: dict[int | str, dict[str, Any]] = {}
    for record in records:
        try:
            answer = spec_bench_answer(record, name)
        except ValueError as exc:
            raise SpecdecError(f"cannot export request {record.id!r} of {run_dir}: {exc}") from exc
        question_id = answer["question_id"]
        if question_id in answers:
            raise SpecdecError(
                f"{run_dir} has two requests with question id {question_id!r}; "
                "Spec-Bench keeps one answer per question"
            )
        answers[question_id] = answer
    lines = [orjson.dumps(answers[q]) + b"\n" for q in sorted(answers, key=_sort_key)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"".join(lines))
    return len(lines)
