"""Shared reading and checking for the built-in benchmark formats.

A benchmark file is JSON Lines (one object per non-blank line) or, when its name
ends in ``.json``, one JSON array of objects.  Every record comes with its
location, ``path:LINE`` or ``path: item N``, so each error can say where it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from specdec.errors import BenchmarkError
from specdec.records import Conversation

if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_CATEGORY = "default"
"""The category of a record that names none."""

_BOM = b"\xef\xbb\xbf"
_JSON_TYPES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}

Parse = Callable[[Mapping[str, Any], str], Conversation]
"""Turns one record, given with its location, into a conversation."""


def json_type(value: object) -> str:
    """Name the JSON type of a parsed value, for error messages."""
    if value == []:
        return "an empty array"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes().removeprefix(_BOM)
    except OSError as exc:
        msg = f"{path}: cannot read the benchmark file ({exc.strerror}); check the path"
        raise BenchmarkError(msg) from exc


def _parse(raw: bytes, where: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = f"{where}: not valid JSON: {exc}; fix the record or remove it"
        raise BenchmarkError(msg) from exc


def _located(value: Any, where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(value, dict):
        msg = (
            f"{where}: expected a JSON object, got {json_type(value)}; "
            'write each record as an object such as {"prompt": "..."}'
        )
        raise BenchmarkError(msg)
    return where, value


def read_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, record)`` for every record of the file at ``path``.

    Raises:
        BenchmarkError: if the file cannot be read or a record is not a JSON object.
    """
    data = _read(path)
    if path.suffix.lower() == ".json":
        items = _parse(data, str(path))
        if not isinstance(items, list):
            msg = (
                f"{path}: expected a JSON array of objects, got {json_type(items)}; "
                "wrap the records in [...] or write them one per line in a .jsonl file"
            )
            raise BenchmarkError(msg)
        for number, item in enumerate(items, 1):
            yield _located(item, f"{path}: item {number}")
        return
    for number, line in enumerate(data.splitlines(), 1):
        if line.strip():
            where = f"{path}:{number}"
            yield _located(_parse(line, where), where)


def load_records(path: Path, parse: Parse) -> list[Conversation]:
    """Parse every record of ``path`` and check the result with :func:`check_conversations`."""
    return check_conversations(
        (where, parse(record, where)) for where, record in read_records(path)
    )


def check_conversations(located: Iterable[tuple[str, Conversation]]) -> list[Conversation]:
    """Return the conversations after checking each has turns, none blank, and a unique id.

    Raises:
        BenchmarkError: naming the location of the bad turn, or of both uses of an id.
    """
    seen: dict[str, str] = {}
    out: list[Conversation] = []
    for where, conversation in located:
        if not conversation.turns:
            msg = f"{where}: {conversation.id!r} has no turns; give it at least one prompt"
            raise BenchmarkError(msg)
        for number, turn in enumerate(conversation.turns, 1):
            if not turn.strip():
                msg = (
                    f"{where}: turn {number} of {conversation.id!r} is empty; "
                    "write the prompt text or remove the record"
                )
                raise BenchmarkError(msg)
        if conversation.id in seen:
            msg = (
                f"{where}: duplicate id {conversation.id!r}, already used at "
                f"{seen[conversation.id]}; give each record a unique id (records without "
                "an id get one from their text, so identical prompts need explicit ids)"
            )
            raise BenchmarkError(msg)
        seen[conversation.id] = where
        out.append(conversation)
    return out


def stable_id(prefix: str, text: str) -> str:
    """Return ``prefix-`` and the first 12 hex digits of the SHA-256 of ``text``.

    The id depends only on the text, so it survives reruns and reordering.
    """
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def wrong_type(where: str, what: str, expected: str, value: object) -> BenchmarkError:
    """Build the error for a value of the wrong JSON type."""
    return BenchmarkError(
        f"{where}: {what} must be {expected}, got {json_type(value)}; fix the record"
    )


def require(record: Mapping[str, Any], key: str, where: str) -> Any:
    """Return ``record[key]``, or raise BenchmarkError saying the key is missing."""
    if key not in record:
        keys = ", ".join(repr(k) for k in record) or "none"
        msg = f"{where}: missing key {key!r} (the record has {keys}); add it"
        raise BenchmarkError(msg)
    return record[key]


def string(value: Any, what: str, where: str) -> str:
    """Return ``value`` if it is a string, else raise BenchmarkError."""
    if not isinstance(value, str):
        raise wrong_type(where, what, "a string", value)
    return value


def strings(value: Any, what: str, where: str) -> tuple[str, ...]:
    """Return ``value`` as a tuple if it is a non-empty list of strings, else raise."""
    if not isinstance(value, list) or not value:
        raise wrong_type(where, what, 'a non-empty list of strings such as ["..."]', value)
    return tuple(string(item, f"{what}[{index}]", where) for index, item in enumerate(value))


def record_id(value: Any, what: str, where: str) -> str:
    """Return an id given as a non-empty string or an integer, as a string."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise wrong_type(where, what, "a string or an integer", value)
    text = str(value)
    if not text.strip():
        msg = f"{where}: {what} is empty; give a unique id or remove the key"
        raise BenchmarkError(msg)
    return text


def category(record: Mapping[str, Any], where: str) -> str:
    """Return the record's ``category`` (a string), or the default category."""
    return string(record.get("category", DEFAULT_CATEGORY), "'category'", where)
