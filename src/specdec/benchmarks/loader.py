"""Load a benchmark file: detect its format, check it whole, select categories and a limit."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from specdec.benchmarks.jsonl import check_conversations, read_records
from specdec.errors import BenchmarkError, PluginError
from specdec.registry import Registry, benchmarks

if TYPE_CHECKING:
    from collections.abc import Sequence

    from specdec.records import BenchmarkConfig, Conversation

SAMPLE_BENCHMARK = "sample_benchmark.jsonl"
_FORMAT_HINT = "choose one with --benchmark-format (benchmark.format in a config file)"


def default_benchmark_path() -> Path:
    """Return the path of the bundled sample benchmark.

    Raises:
        BenchmarkError: if neither the installed package nor the checkout holds it.
    """
    packaged = files("specdec") / "data" / SAMPLE_BENCHMARK
    if isinstance(packaged, Path) and packaged.is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[3] / "data" / SAMPLE_BENCHMARK
    if checkout.is_file():
        return checkout
    msg = (
        f"the bundled sample benchmark is missing (looked for {packaged} and {checkout}); "
        "reinstall specdec or give a benchmark file"
    )
    raise BenchmarkError(msg)


def detect_format(path: Path, registry: Registry = benchmarks) -> str:
    """Return the name of the one registered format that accepts the first record of ``path``.

    Raises:
        BenchmarkError: if the file has no records, or not exactly one format accepts.
    """
    first = next(read_records(path), None)
    if first is None:
        raise BenchmarkError(f"{path}: no prompts; add one JSON object per line")
    where, record = first
    accepting: list[str] = []
    names = registry.names()
    for name in names:
        try:
            fmt = registry.create(name)
        except PluginError:
            # A broken third-party format is logged by the registry; the others still work.
            continue
        if fmt.accepts(record):
            accepting.append(name)
    if len(accepting) == 1:
        return accepting[0]
    keys = ", ".join(repr(k) for k in record) or "none"
    if accepting:
        msg = f"{where}: the record fits several formats ({', '.join(accepting)}); {_FORMAT_HINT}"
    else:
        msg = (
            f"{where}: no benchmark format accepts a record with keys {keys}; formats: "
            f"{', '.join(names) or 'none'}; fix the record or {_FORMAT_HINT}"
        )
    raise BenchmarkError(msg)


def load_benchmark(
    path: Path,
    fmt: str | None = None,
    *,
    limit: int | None = None,
    categories: Sequence[str] | None = None,
    per_category: int | None = None,
    registry: Registry = benchmarks,
) -> list[Conversation]:
    """Read ``path``'s conversations; keep the categories, ``per_category`` each, then ``limit``.

    ``fmt`` names a registered benchmark format; left unset it is detected from the
    first record.  The whole file is checked before selecting: it must hold at least
    one conversation, ids must be unique and no turn may be blank.

    Raises:
        BenchmarkError: naming the file (and line, where the format knows it) and the fix.
    """
    if limit is not None and limit < 1:
        msg = f"the benchmark limit must be at least 1, got {limit}; leave it unset to run all"
        raise BenchmarkError(msg)
    if per_category is not None and per_category < 1:
        msg = (f"the benchmark's per_category must be at least 1, got {per_category}; "
               "leave it unset to run every prompt of each category")
        raise BenchmarkError(msg)
    if categories is not None and not categories:
        msg = "no benchmark categories given; name at least one, or leave them unset to run all"
        raise BenchmarkError(msg)
    name = fmt if fmt is not None else detect_format(path, registry)
    loaded = registry.create(name).load(path)
    # Third-party formats may not check their output; the built-ins already did, with lines.
    conversations = check_conversations(
        (f"{path}: item {index} (from the {name} format)", conversation)
        for index, conversation in enumerate(loaded, 1)
    )
    if not conversations:
        raise BenchmarkError(f"{path}: no prompts; add at least one {name} record")
    if categories is not None:
        present = sorted({c.category for c in conversations})
        unknown = [c for c in categories if c not in present]
        if unknown:
            msg = (
                f"{path}: no prompts in categories {', '.join(map(repr, unknown))}; "
                f"the categories present are {', '.join(present)}"
            )
            raise BenchmarkError(msg)
        conversations = [c for c in conversations if c.category in categories]
    if per_category is not None:
        seen: dict[str, int] = {}
        kept = []
        for conversation in conversations:
            seen[conversation.category] = seen.get(conversation.category, 0) + 1
            if seen[conversation.category] <= per_category:
                kept.append(conversation)
        conversations = kept
    return conversations[:limit]


def run_conversations(bench: BenchmarkConfig, folder: Path) -> dict[str, Conversation]:
    """The conversations the run in ``folder`` answered, by id, selected as the run selected them.

    ``bench`` is the run's resolved benchmark section (``run_folder.read_config``):
    its ``path`` is the file the run read.  Passes that rebuild a run's prompts
    (scoring, replay) read the conversations here.

    Raises:
        BenchmarkError: the config names no benchmark file, or it cannot be read.
    """
    if bench.path is None:
        msg = f"{folder}: the run's config names no benchmark path"
        raise BenchmarkError(msg)
    return {c.id: c for c in load_benchmark(
        Path(bench.path), bench.format, limit=bench.limit, categories=bench.categories,
        per_category=bench.per_category)}


def conversation_of(conversations: dict[str, Conversation], request_id: str, folder: Path,
                    bench: BenchmarkConfig) -> Conversation:
    """The conversation request ``request_id`` of the run in ``folder`` answered.

    Raises:
        BenchmarkError: the benchmark file no longer holds it.
    """
    conversation = conversations.get(request_id)
    if conversation is None:
        msg = (f"request {request_id!r} of {folder} is not in its benchmark "
               f"{bench.path} any more: was the file changed since the run?")
        raise BenchmarkError(msg)
    return conversation
