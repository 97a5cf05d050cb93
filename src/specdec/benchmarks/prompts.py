"""The ``prompts`` format: one single-turn prompt per record."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from specdec.benchmarks.jsonl import category, load_records, record_id, require, stable_id, string
from specdec.records import Conversation
from specdec.registry import PLUGIN_API_VERSION

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path


def _conversation(record: Mapping[str, Any], where: str) -> Conversation:
    prompt = string(require(record, "prompt", where), "'prompt'", where)
    return Conversation(
        id=record_id(record["id"], "'id'", where) if "id" in record else stable_id("p", prompt),
        turns=(prompt,),
        category=category(record, where),
    )


class PromptsFormat:
    """Records ``{"prompt": str, "id": str | int, "category": str}``; id and category optional.

    A missing id is ``p-`` and the first 12 hex digits of the prompt's SHA-256, so
    it stays the same across runs and when lines are reordered.
    """

    name = "prompts"
    plugin_api_version = PLUGIN_API_VERSION

    def accepts(self, record: Mapping[str, Any]) -> bool:
        """Tell whether ``record`` has a ``prompt`` key."""
        return "prompt" in record

    def load(self, path: Path) -> list[Conversation]:
        """Read every prompt of ``path``; raise BenchmarkError naming the bad line."""
        return load_records(path, _conversation)
