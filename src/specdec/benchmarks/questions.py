"""The ``questions`` format: Spec-Bench and MT-Bench questions, one or more turns each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from specdec.benchmarks.jsonl import category, load_records, record_id, require, strings
from specdec.records import Conversation
from specdec.registry import PLUGIN_API_VERSION

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path


def _conversation(record: Mapping[str, Any], where: str) -> Conversation:
    return Conversation(
        id=record_id(require(record, "question_id", where), "'question_id'", where),
        turns=strings(require(record, "turns", where), "'turns'", where),
        category=category(record, where),
    )


class QuestionsFormat:
    """Records ``{"question_id": int | str, "category": str, "turns": [str, ...]}``.

    This is the ``question.jsonl`` format of Spec-Bench and MT-Bench.  Turns are
    answered in order; other keys (such as ``reference``) are ignored.
    """

    name = "questions"
    plugin_api_version = PLUGIN_API_VERSION

    def accepts(self, record: Mapping[str, Any]) -> bool:
        """Tell whether ``record`` has a ``turns`` key."""
        return "turns" in record

    def load(self, path: Path) -> list[Conversation]:
        """Read every question of ``path``; raise BenchmarkError naming the bad line."""
        return load_records(path, _conversation)
