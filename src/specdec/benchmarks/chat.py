"""The ``chat`` format: a chat history that ends with the user's prompt."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast, get_args

import orjson

from specdec.benchmarks.jsonl import (
    category,
    load_records,
    record_id,
    require,
    stable_id,
    string,
    wrong_type,
)
from specdec.errors import BenchmarkError
from specdec.records import Conversation, Message, Role
from specdec.registry import PLUGIN_API_VERSION

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

_ROLES: tuple[str, ...] = get_args(Role)


def _message(value: Any, where: str) -> Message:
    if not isinstance(value, dict):
        raise wrong_type(
            where, "a message", 'an object such as {"role": "user", "content": "..."}', value
        )
    role = require(value, "role", where)
    if role not in _ROLES:
        msg = f"{where}: 'role' is {role!r}; use one of {', '.join(_ROLES)}"
        raise BenchmarkError(msg)
    return Message(cast("Role", role), string(require(value, "content", where), "'content'", where))


def _conversation(record: Mapping[str, Any], where: str) -> Conversation:
    raw = require(record, "messages", where)
    if not isinstance(raw, list) or not raw:
        raise wrong_type(where, "'messages'", "a non-empty list of messages", raw)
    messages = [_message(item, f"{where}: messages[{index}]") for index, item in enumerate(raw)]
    *context, last = messages
    if last.role != "user":
        msg = (
            f"{where}: the last message is from {last.role!r}; end 'messages' with the "
            "user message the model should answer"
        )
        raise BenchmarkError(msg)
    canonical = orjson.dumps([{"role": m.role, "content": m.content} for m in messages])
    return Conversation(
        id=(
            record_id(record["id"], "'id'", where)
            if "id" in record
            else stable_id("c", canonical.decode())
        ),
        turns=(last.content,),
        category=category(record, where),
        context=tuple(context),
    )


class ChatFormat:
    """Records ``{"messages": [{"role": ..., "content": str}, ...], "id": ..., "category": ...}``.

    The last message must be the user's: it is the one turn to answer, and the
    messages before it are fixed context.  ``id`` and ``category`` are optional; a
    missing id is ``c-`` and the first 12 hex digits of the SHA-256 of the messages
    as canonical JSON.
    """

    name = "chat"
    plugin_api_version = PLUGIN_API_VERSION

    def accepts(self, record: Mapping[str, Any]) -> bool:
        """Tell whether ``record`` has a ``messages`` key."""
        return "messages" in record

    def load(self, path: Path) -> list[Conversation]:
        """Read every conversation of ``path``; raise BenchmarkError naming the bad line."""
        return load_records(path, _conversation)
