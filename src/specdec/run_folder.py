"""The run folder: specdec's storage layer for one run.

One module owns a run folder's files: their names, writing them, reading them
back, resuming a run and repairing a cut last line.  Nobody else opens them
(``report``, ``export``, ``study``, training and the pandas loader all read
through here), as inspect_ai's ``write_eval_log`` and ``read_eval_log`` live
side by side.

A run folder holds:

``config.yaml``
    The resolved configuration and the run's provenance (versions, machine,
    command, ``run_id``), written once when the run starts.  ``--config
    RUN_DIR/config.yaml`` repeats the run.
``responses.jsonl``
    The record: one line per finished request, appended and synced to disk
    before the next request is reported, so a crash loses nothing finished.
    Each line carries ``schema_version`` and ``run_id`` and nothing else
    besides the request.  Always written, whatever ``sinks`` says.
``metrics.json``
    Written atomically when the run finishes: schema version, provenance (with
    ``finished_at``), configuration, summary, outcome, then every request (one
    per line) and, last, ``columns``.  ``pandas.read_json(path, typ="series")``
    still loads it whole, while :func:`read_summary` reads only what comes
    before the requests and :func:`read_outputs` only the columns at the end.
``outcome.json``
    Written only when a run fails: its status, error type and message, and
    times.  A finished run's outcome is in ``metrics.json``.
``margins.json``
    A baseline run's top-2 margins at the positions where other settings of
    its batch diverged from it, read by the batch's scoring pass
    (:mod:`specdec.scoring`) after every timed run, with the engine settings
    of that pass and the ``run_id`` scored; written atomically, read by
    :func:`read_margins`.

``metrics.json``'s ``columns`` (base64 of raw arrays laid out as its header says) hold
what reports compare, by column: each request's id, category and error, each
turn's token ids, margins and text, each request's Spec-Bench accept-length
totals.  They are derived from the records, so :func:`read_outputs` falls back
to the records where they are missing (runs of earlier releases).  Parsing
JSON numbers costs about a second per 100,000 turns of 128 tokens on a small
CPU; loading these columns, a small fraction of that.

Repair of a cut last line happens only when a run is resumed
(:meth:`RunWriter.claim` with ``resume``), never when a report reads.
"""

from __future__ import annotations

import base64
import binascii
import gc
import mmap
import os
import sys
import uuid
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, NamedTuple, overload

import orjson
import structlog
from attrs import field, frozen

from specdec.config import dump_config, load_config
from specdec.config import read_provenance as config_provenance
from specdec.errors import OutputExistsError, SpecdecError
from specdec.files import atomic_write_bytes, atomic_write_text
from specdec.lossless import RequestOutput, ScoredMargins
from specdec.metrics import request_spec, request_tokens_per_s, spec_bench_accept_totals
from specdec.provenance import now
from specdec.records import SCHEMA_VERSION, ExperimentConfig, RequestRecord, RunSummary
from specdec.serialization import problems, structure, unstructure

if TYPE_CHECKING:
    import pandas as pd

log = structlog.get_logger("specdec.run_folder")

CONFIG_FILE = "config.yaml"
RESPONSES_FILE = "responses.jsonl"
METRICS_FILE = "metrics.json"
OUTCOME_FILE = "outcome.json"
MARGINS_FILE = "margins.json"
RUN_FILES = (CONFIG_FILE, RESPONSES_FILE, METRICS_FILE, OUTCOME_FILE, MARGINS_FILE)

RECORD_SINK_NAMES = frozenset({"json", "jsonl"})
"""Sink names of earlier releases for ``metrics.json`` and ``responses.jsonl``.

Both files are the run's record and always written; a config that still lists
these names is accepted and they select nothing more."""

_LINE_KEYS = ("schema_version", "run_id", "provenance")
"""Keys a ``responses.jsonl`` line carries besides the request (``provenance``
only in files of earlier releases)."""

_REQUESTS_KEY = b'"requests": ['
_COLUMNS_KEY = b'"columns": "'

Status = Literal["done", "failed", "interrupted"]


@frozen
class Outcome:
    """How a run ended, as its folder says.

    ``status`` is ``done`` (``metrics.json`` written), ``failed`` (an error
    ended it) or ``interrupted`` (Ctrl-C or a signal ended it); a run killed
    outright leaves no outcome at all.
    """

    status: Status
    error_type: str | None = None
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    requests: int = 0
    """Requests in ``responses.jsonl`` when the run ended."""


@frozen
class StoredRun:
    """A finished run as its folder holds it."""

    folder: Path
    config: ExperimentConfig
    summary: RunSummary
    provenance: dict[str, Any] = field(factory=dict)

    def records(self) -> list[RequestRecord]:
        """Every request record (read on demand: the file can be large)."""
        return read_records(self.folder)


# -- reading -----------------------------------------------------------------


def check_folder(folder: Path) -> None:
    """Raise a SpecdecError unless ``folder`` is an existing folder (said plainly)."""
    if not folder.exists():
        msg = f"{folder} does not exist: give the output folder of a specdec run or batch"
        raise SpecdecError(msg)
    if not folder.is_dir():
        msg = f"{folder} is a file, not a folder: give the output folder of a specdec run or batch"
        raise SpecdecError(msg)


def is_finished(folder: Path) -> bool:
    """Whether ``folder`` holds a finished run (its ``metrics.json``)."""
    return (folder / METRICS_FILE).is_file()


def latest_unfinished(base: Path) -> Path | None:
    """The run folder directly under ``base`` that holds an unfinished run, changed last.

    Unfinished: a ``config.yaml`` or ``responses.jsonl`` and no ``metrics.json``.
    None if there is none (or no ``base``).
    """
    found: list[tuple[float, Path]] = []
    try:
        folders = [f for f in base.iterdir() if f.is_dir()]
    except OSError:
        return None
    for folder in folders:
        files = [folder / n for n in (RESPONSES_FILE, CONFIG_FILE) if (folder / n).is_file()]
        if files and not is_finished(folder):
            found.append((max(f.stat().st_mtime for f in files), folder))
    return max(found)[1] if found else None


def count_records(folder: Path) -> int:
    """Requests finished so far (lines of ``responses.jsonl``), for progress displays.

    Lines, not requests: a request run again by ``--retry-failed`` counts twice.
    """
    try:
        with (folder / RESPONSES_FILE).open("rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def read_config(folder: Path) -> ExperimentConfig:
    """The resolved configuration of the run in ``folder``."""
    check_folder(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        msg = f"{folder} holds no run ({CONFIG_FILE} is missing)"
        raise SpecdecError(msg)
    return load_config(path)


@contextmanager
def _bulk() -> Iterator[None]:
    # Reading builds millions of small objects that never form cycles; the
    # cyclic collector would walk them again and again (it halves read time).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _structure_record(data: Any, where: str, path: str = "$") -> RequestRecord:
    if isinstance(data, dict):
        for key in _LINE_KEYS:
            data.pop(key, None)
    try:
        return structure(data, RequestRecord)
    except Exception as exc:
        lines = "\n".join(f"  {p}" for p in problems(exc, path))
        raise SpecdecError(f"invalid request record in {where}:\n{lines}") from exc


def _read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered lines of a ``responses.jsonl``; a cut last line is left out (and logged).

    Streamed, so a large file is never held in memory beside its records.
    """
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):  # only the last line can lack it: a cut write
                log.warning("ignoring a cut line at the end of responses.jsonl (the run was "
                            "interrupted while writing it)", path=str(path), line=number)
            elif line.strip():
                yield number, line


def _records_from_responses(path: Path) -> list[RequestRecord]:
    """The records of ``responses.jsonl``: the last line of each request id.

    A request run again (``--resume --retry-failed`` after it failed) appends a
    new line; that line replaces the old one, and the request takes the place
    of its last line in the order.
    """
    records: dict[str, RequestRecord] = {}
    with _bulk():
        for number, line in _read_lines(path):
            where = f"{path}, line {number}"
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise SpecdecError(f"{where} is not valid JSON: {exc}") from exc
            if not isinstance(item, dict):
                raise SpecdecError(f"{where} is not a JSON object")
            record = _structure_record(item, where)
            records.pop(record.id, None)
            records[record.id] = record
    return list(records.values())


def _damaged(path: Path, problem: str) -> SpecdecError:
    """The error for a damaged ``metrics.json``, with the way to write it again."""
    folder = path.parent
    if (folder / RESPONSES_FILE).is_file() and (folder / CONFIG_FILE).is_file():
        remedy = (f"its requests are safe in {RESPONSES_FILE}: delete {path} and run "
                  f"`specdec-run --resume --output-dir {folder}`, which writes it again from "
                  f"them (it starts the engine, but runs no request again)")
    else:
        remedy = (f"there is no {RESPONSES_FILE} beside it to rebuild it from: run the "
                  f"experiment again (`specdec-run --config {folder / CONFIG_FILE} "
                  f"--overwrite --output-dir {folder}`)")
    return SpecdecError(f"{path} is damaged ({problem}); {remedy}")


def _load_metrics(path: Path) -> dict[str, Any]:
    try:
        with _bulk():
            payload = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise _damaged(path, f"not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise SpecdecError(f"{path} is not a JSON object; is it a specdec metrics.json?")
    return payload


def _records_from_metrics(path: Path) -> list[RequestRecord]:
    requests = _load_metrics(path).get("requests")
    if not isinstance(requests, list):
        raise SpecdecError(f"{path} has no 'requests' list; is it a specdec metrics.json?")
    with _bulk():
        return [_structure_record(item, str(path), f"$.requests[{i}]")
                for i, item in enumerate(requests)]


def read_records(folder: Path) -> list[RequestRecord]:
    """The request records of the run in ``folder``, in the order they finished.

    From ``responses.jsonl``, whose cut last line (a crash while writing it) is
    left out; from ``metrics.json``'s requests where there is no such file or
    the ``metrics.json`` was not written by this module (hand-made ones).
    Reading never changes a file.

    Raises:
        SpecdecError: the folder holds neither file, or a record is invalid
            (the message names the file and the line or JSON path).
    """
    check_folder(folder)
    responses = folder / RESPONSES_FILE
    metrics = folder / METRICS_FILE
    if metrics.is_file():
        if responses.is_file() and _written_by_run_folder(metrics):
            # Our own metrics.json repeats responses.jsonl line for line; the
            # line file is faster to read (no whole-file parse).
            return _records_from_responses(responses)
        return _records_from_metrics(metrics)
    if responses.is_file():
        return _records_from_responses(responses)
    raise SpecdecError(
        f"{folder} holds neither {METRICS_FILE} nor {RESPONSES_FILE}; "
        "give the output folder of a specdec run"
    )


def _metrics_head(path: Path) -> dict[str, Any] | None:
    """Everything in a ``metrics.json`` before its requests, without reading them.

    Only files this module wrote have the layout that allows it (None otherwise).
    """
    with path.open("rb") as handle:
        head = bytearray()
        for line in handle:
            if line.strip() == _REQUESTS_KEY:
                try:
                    parsed: dict[str, Any] = orjson.loads(bytes(head).rstrip().rstrip(b",") + b"}")
                except orjson.JSONDecodeError:
                    return None
                return parsed
            head += line
            if len(head) > 1 << 24:  # no requests line in the first 16 MiB: not our layout
                return None
    return None


def _written_by_run_folder(path: Path) -> bool:
    return _metrics_head(path) is not None


def _header(folder: Path) -> dict[str, Any]:
    check_folder(folder)
    path = folder / METRICS_FILE
    if not path.is_file():
        msg = f"{folder} holds no finished run (no {METRICS_FILE})"
        raise SpecdecError(msg)
    head = _metrics_head(path)
    return head if head is not None else _load_metrics(path)


def read_summary(folder: Path) -> RunSummary:
    """The summary of the finished run in ``folder`` (its requests are not read)."""
    return _summary(folder, _header(folder))


def _summary(folder: Path, header: dict[str, Any]) -> RunSummary:
    data = header.get("summary")
    try:
        return structure(data, RunSummary)
    except Exception as exc:
        lines = "\n".join(f"  {p}" for p in problems(exc, "$.summary"))
        raise SpecdecError(f"invalid summary in {folder / METRICS_FILE}:\n{lines}") from exc


def read_provenance(folder: Path) -> dict[str, Any]:
    """Where the run came from: ``metrics.json``'s provenance, else ``config.yaml``'s."""
    if is_finished(folder):
        provenance = _header(folder).get("provenance")
        if isinstance(provenance, dict):
            return provenance
    return config_provenance(folder / CONFIG_FILE)


def read_run(folder: Path) -> StoredRun:
    """A finished run's configuration, summary and provenance (records on demand)."""
    header = _header(folder)
    return StoredRun(folder, read_config(folder), _summary(folder, header),
                     dict(header.get("provenance") or {}))


def read_outcome(folder: Path) -> Outcome | None:
    """How the run in ``folder`` ended; None if it never ended (still running, or killed)."""
    if is_finished(folder):
        outcome = _header(folder).get("outcome")
        if isinstance(outcome, dict):
            return structure(outcome, Outcome)
        return Outcome("done")
    path = folder / OUTCOME_FILE
    if not path.is_file():
        return None
    try:
        return structure(orjson.loads(path.read_bytes()), Outcome)
    except Exception as exc:  # noqa: BLE001 - a damaged outcome must not hide the run state
        return Outcome("failed", type(exc).__name__, f"unreadable {path}: {exc}")


def write_margins(folder: Path, margins: ScoredMargins) -> None:
    """Write a baseline run's scoring-pass margins (``margins.json``), atomically."""
    data = {"schema_version": SCHEMA_VERSION, **unstructure(margins)}
    atomic_write_bytes(folder / MARGINS_FILE, orjson.dumps(data, option=orjson.OPT_INDENT_2))


def read_margins(folder: Path) -> ScoredMargins | None:
    """The scoring pass's margins of the run in ``folder``, or None if it has none.

    Margins scored for another run of the folder (it was run again since) are
    ignored, with a warning, as is a damaged file: the next batch run scores
    them again.  ``lookup`` on the result gives each margin by (request id,
    turn, position); ``engine`` the settings the pass ran with.
    """
    path = folder / MARGINS_FILE
    try:
        data = orjson.loads(path.read_bytes())
        data.pop("schema_version", None)
        margins = structure(data, ScoredMargins)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged file is scored again, not fatal
        log.warning("ignoring unreadable margins; the next batch run scores them again",
                    path=str(path), error=f"{type(exc).__name__}: {exc}")
        return None
    run_id = read_provenance(folder).get("run_id") if (folder / CONFIG_FILE).is_file() else None
    if run_id is not None and margins.run_id != run_id:
        log.warning("ignoring margins scored for an earlier run of this folder",
                    path=str(path), scored=margins.run_id, run=run_id)
        return None
    return margins


def to_dataframe(folder: Path) -> pd.DataFrame:
    """One row per turn of every request, with its request's id, category and error.

    The pandas loader: columns are the :class:`~specdec.records.TurnRecord`
    fields, speculative counts flattened as ``spec.*``, plus ``id``,
    ``category``, ``turn`` and ``error``.  Needs pandas (``pip install pandas``).
    """
    try:
        import pandas as pd  # noqa: PLC0415 - optional, only for this loader
    except ImportError as exc:
        msg = "the pandas loader needs pandas: pip install pandas"
        raise SpecdecError(msg) from exc
    rows = [
        {"id": record.id, "category": record.category, "turn": index, "error": record.error,
         **unstructure(turn)}
        for record in read_records(folder)
        for index, turn in enumerate(record.turns)
    ]
    return pd.json_normalize(rows)


# -- columns: what reports compare, without parsing JSON numbers --------------

_COLUMNS_VERSION = 2
"""2: per-request figures (rate, tokens, seconds, speculative counts) added."""
_NO_TOTALS = -1
"""Accept-length totals a request's counts could not give (the report then reads
its records, where the same error is raised with its message)."""


class _Columns:
    """A finished run's columns, decoded from ``metrics.json`` column by column on demand.

    The file is memory-mapped; a column (or a few elements of one) is decoded
    from its base64 text only when asked for, so a report decodes every token
    id but only the margins and texts of the turns that diverge.
    """

    def __init__(self, path: Path, start: int, length: int, layout: dict[str, Any]) -> None:
        """The base64 text at ``start`` (``length`` characters) of the file at ``path``."""
        with path.open("rb") as handle:
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        self._text = memoryview(self._map)[start:start + length]
        self._layout = layout

    def _decode(self, begin: int, end: int) -> bytes:
        # Bytes [begin, end) of the decoded columns: base64 turns 3 bytes into 4
        # characters, so decode the characters that cover them and trim.
        first = begin // 3
        data = binascii.a2b_base64(self._text[first * 4:-(-end // 3) * 4], strict_mode=True)
        return data[begin - first * 3:end - first * 3]

    def column(self, name: str, first: int = 0, last: int | None = None) -> memoryview:
        """Elements ``first`` to ``last`` of column ``name`` (all by default), typed."""
        code, offset, size = self._layout[name]
        if code != _COLUMN_TYPES[name]:
            msg = f"column {name} has type {code!r}, expected {_COLUMN_TYPES[name]!r}"
            raise ValueError(msg)
        width = _ITEM_SIZES[code]
        end = offset + size if last is None else offset + last * width
        return memoryview(self._decode(offset + first * width, end)).cast(code)


class _LazyColumn(Sequence[Any]):
    """Elements ``first`` to ``last`` of a column, each decoded when it is read."""

    def __init__(self, columns: _Columns, name: str, first: int, last: int) -> None:
        self._columns, self._name, self._first, self._last = columns, name, first, last

    def __len__(self) -> int:
        return self._last - self._first

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            values = self._columns.column(self._name, self._first + start, self._first + stop)
            return values.tolist()[::step]
        position = index + len(self) if index < 0 else index
        if not 0 <= position < len(self):
            msg = f"{self._name} index {index} out of range"
            raise IndexError(msg)
        at = self._first + position
        return self._columns.column(self._name, at, at + 1)[0]


class ColumnTurn:
    """One turn as the columns hold it: what :mod:`specdec.lossless` compares.

    Token ids are a memoryview of the run's decoded column (``==`` at C speed,
    no copy); margins and text are decoded only when asked for, which the
    check does only where the turn diverges.
    """

    __slots__ = ("_columns", "_margins", "_text", "output_token_ids")

    def __init__(self, columns: _Columns, token_ids: Sequence[int], margins: tuple[int, int],
                 text: tuple[int, int]) -> None:
        """A turn of ``columns``: its token ids, and where its margins and text are."""
        self._columns = columns
        self.output_token_ids = token_ids
        self._margins = margins
        self._text = text

    @property
    def logprob_margins(self) -> Sequence[float]:
        """Per output token, the top-2 log-probability margin (may be empty).

        Decoded item by item as read: the check reads one, at the divergence.
        """
        first, last = self._margins
        return _LazyColumn(self._columns, "margins", first, last)

    @property
    def output(self) -> str:
        """The answer's text."""
        first, last = self._text
        return bytes(self._columns.column("text", first, last)).decode("utf-8")


class ColumnRequest(NamedTuple):
    """One request as the columns hold it (a named tuple: 100,000 are built per report)."""

    id: str
    category: str
    error: str | None
    turns: tuple[ColumnTurn, ...]


@frozen
class RunOutputs:
    """What a report compares of one run: its requests' outputs and accept-length totals.

    ``requests`` are :class:`ColumnRequest` items when the run folder has its
    columns, else the full :class:`~specdec.records.RequestRecord` items; both
    are what :func:`specdec.lossless.check` reads.  ``accept_totals`` gives each
    request's category and :func:`specdec.metrics.spec_bench_accept_totals`.
    """

    requests: tuple[RequestOutput, ...]
    accept_totals: tuple[tuple[str, tuple[int, int]], ...]
    figures: RequestFigures | None = None
    """Each request's figures as columns; None when read from the records."""


@frozen
class RequestFigures:
    """Per request (failed ones included, in the run's order), what intervals resample.

    ``rate`` is :func:`specdec.metrics.request_tokens_per_s` (0 for a failed
    request); ``tokens``, ``seconds`` its output tokens and walltime; the last
    three its :func:`specdec.metrics.request_spec` counts (0 without speculation).
    Each is a buffer of machine numbers (``numpy.frombuffer`` reads it as is).
    """

    rate: memoryview
    tokens: memoryview
    seconds: memoryview
    accepted: memoryview
    draft_tokens: memoryview
    drafts: memoryview


def _strings(blob: memoryview, ends: Sequence[int]) -> list[str]:
    return [bytes(blob[start:end]).decode("utf-8")
            for start, end in zip([0, *ends], ends, strict=False)]


_COLUMNS_END = b'"\n}\n'

_COLUMN_TYPES = {
    # name: array typecode (all little-endian machine types; the layout says which)
    "token_ids": "i", "margins": "d", "text": "B", "id": "B", "category": "B", "error": "B",
    "failed": "b", "token_end": "q", "margin_end": "q", "text_end": "q", "turns_end": "q",
    "id_end": "q", "category_end": "q", "error_end": "q", "accept_sum": "q",
    "accept_count": "q",
    # per request, what the confidence intervals resample (specdec.intervals.RunSample)
    "rate": "d", "tokens": "q", "seconds": "d", "accepted": "q", "draft_tokens": "q",
    "drafts": "q",
}
"""The columns: raw arrays one after another, where the header's ``columns_layout``
says (typecode, byte offset, length) for each, so reading them copies nothing."""
_ITEM_SIZES = {code: array(code).itemsize for code in set(_COLUMN_TYPES.values())}


def _open_columns(path: Path) -> _Columns | None:
    """A ``metrics.json``'s columns, found from its end; None if it has none.

    The header says how long the base64 text is (``columns_length``) and where
    each column lies in the decoded bytes (``columns_layout``).
    """
    head = _metrics_head(path) or {}
    length, layout = head.get("columns_length"), head.get("columns_layout")
    ours = (head.get("columns_version") == _COLUMNS_VERSION
            # raw machine arrays: readable where they were written, or on its like
            and head.get("columns_byteorder") == sys.byteorder)
    if not (ours and isinstance(length, int) and isinstance(layout, dict)):
        return None
    lead = b"\n  " + _COLUMNS_KEY
    size = path.stat().st_size
    start = size - len(_COLUMNS_END) - length
    if start - len(lead) < 0:
        return None
    with path.open("rb") as handle:
        handle.seek(start - len(lead))
        if handle.read(len(lead)) != lead:
            return None
        handle.seek(size - len(_COLUMNS_END))
        if handle.read() != _COLUMNS_END:
            return None
    return _Columns(path, start, length, layout)


def _read_columns(folder: Path) -> RunOutputs | None:
    path = folder / METRICS_FILE
    if not path.is_file():
        return None
    try:
        columns = _open_columns(path)
        if columns is None:
            return None
        cols = {name: columns.column(name) for name in _COLUMN_TYPES
                if name not in ("margins", "text")}
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        log.warning("ignoring unreadable columns; reading the records instead",
                    path=str(path), error=f"{type(exc).__name__}: {exc}")
        return None
    sums, counts = cols["accept_sum"].tolist(), cols["accept_count"].tolist()
    if _NO_TOTALS in sums:
        return None
    token_ids = cols["token_ids"]
    token_end, margin_end = cols["token_end"].tolist(), cols["margin_end"].tolist()
    text_end, turns_end = cols["text_end"].tolist(), cols["turns_end"].tolist()
    categories = _strings(cols["category"], cols["category_end"].tolist())
    every_turn = [
        ColumnTurn(columns, token_ids[t0:t1], (m0, m1), (x0, x1))
        for t0, t1, m0, m1, x0, x1 in zip([0, *token_end], token_end, [0, *margin_end],
                                          margin_end, [0, *text_end], text_end, strict=False)
    ]
    requests = [
        ColumnRequest(request_id, category, error if bad else None,
                      tuple(every_turn[first:last]))
        for request_id, category, error, bad, first, last in zip(
            _strings(cols["id"], cols["id_end"].tolist()), categories,
            _strings(cols["error"], cols["error_end"].tolist()), cols["failed"].tolist(),
            [0, *turns_end], turns_end, strict=False)
    ]
    totals = tuple((c, (s, n)) for c, s, n in zip(categories, sums, counts, strict=True))
    figures = RequestFigures(cols["rate"], cols["tokens"], cols["seconds"], cols["accepted"],
                             cols["draft_tokens"], cols["drafts"])
    return RunOutputs(tuple(requests), totals, figures)


def read_outputs(folder: Path) -> RunOutputs:
    """What a report compares of the finished run in ``folder``, read the fastest way.

    From ``metrics.json``'s columns where the run has them, else from the records.
    """
    columns = _read_columns(folder)
    if columns is not None:
        return columns
    records = read_records(folder)
    return RunOutputs(tuple(records),
                      tuple((r.category, spec_bench_accept_totals((r,))) for r in records))


def _columns_bytes(records: Sequence[RequestRecord]) -> tuple[bytes, dict[str, Any]]:
    """The columns of ``records`` and their layout (see :data:`_COLUMN_TYPES`)."""
    cols: dict[str, array[Any]] = {name: array(code) for name, code in _COLUMN_TYPES.items()}

    def put(name: str, value: str) -> None:
        cols[name].frombytes(value.encode("utf-8"))
        cols[f"{name}_end"].append(len(cols[name]))

    for record in records:
        for turn in record.turns:
            cols["token_ids"].extend(turn.output_token_ids)
            cols["token_end"].append(len(cols["token_ids"]))
            cols["margins"].extend(turn.logprob_margins)
            cols["margin_end"].append(len(cols["margins"]))
            put("text", turn.output)
        cols["turns_end"].append(len(cols["token_end"]))
        put("id", record.id)
        put("category", record.category)
        put("error", record.error or "")
        cols["failed"].append(record.error is not None)
        try:
            total, count = spec_bench_accept_totals((record,))
        except ValueError:
            total = count = _NO_TOTALS
        cols["accept_sum"].append(total)
        cols["accept_count"].append(count)
        spec = request_spec(record)
        cols["rate"].append(request_tokens_per_s(record) if record.error is None else 0.0)
        cols["tokens"].append(record.output_tokens)
        cols["seconds"].append(record.walltime_s)
        cols["accepted"].append(spec.num_accepted_tokens if spec else 0)
        cols["draft_tokens"].append(spec.num_draft_tokens if spec else 0)
        cols["drafts"].append(spec.num_drafts if spec else 0)
    blob = bytearray()
    layout: dict[str, Any] = {}
    for name, values in cols.items():
        blob += b"\0" * (-len(blob) % 8)  # each column starts 8-byte aligned
        data = values.tobytes()
        layout[name] = [values.typecode, len(blob), len(data)]
        blob += data
    return bytes(blob), layout


# -- writing -----------------------------------------------------------------


def new_run_id() -> str:
    """A fresh run id (a UUID4 in hex)."""
    return uuid.uuid4().hex


def write_outcome(folder: Path, outcome: Outcome) -> None:
    """Record how an unfinished run ended (a finished run's is in ``metrics.json``)."""
    atomic_write_bytes(folder / OUTCOME_FILE, orjson.dumps(unstructure(outcome)))


class RunWriter:
    """Writes one run's folder: claim it, write the config, append records, finish.

    A fresh instance serves one run::

        writer = RunWriter(folder)
        previous = writer.claim(config, overwrite=False, resume=True)
        writer.start(config, provenance)
        writer.append(record) ...
        writer.finish(summary, records)     # or writer.fail(exc)
    """

    def __init__(self, folder: Path) -> None:
        """Write into ``folder`` (created when claimed)."""
        self.folder = folder
        self.run_id = new_run_id()
        self.started_at = now()
        self._file: IO[bytes] | None = None
        self._provenance: dict[str, Any] = {}
        self._config: ExperimentConfig | None = None

    def claim(self, config: ExperimentConfig, *, overwrite: bool = False,
              resume: bool = False, retry_failed: bool = False) -> list[RequestRecord]:
        """Make the folder ready for ``config``; return the records of a run being resumed.

        A finished run is refused unless ``overwrite``; an unfinished one needs
        ``resume`` (and the same configuration) or ``overwrite``; both at once
        are refused.  ``retry_failed`` with ``resume`` leaves the failed
        requests out of the returned records, so they run again (their new
        lines in ``responses.jsonl`` replace the old ones); a finished run in
        which requests failed is reopened for it (its ``metrics.json`` is
        removed once the configuration is known to match, and written again
        when the retry finishes).  ``overwrite`` deletes the run's files and says, as a
        warning, how many finished requests it deletes; it asks no confirmation
        (it was asked for, and it must work unattended).  Resuming drops a cut
        last line of ``responses.jsonl`` so appending continues cleanly, and
        keeps the run's id.

        Raises:
            OutputExistsError: the folder holds a run that may not be replaced,
                or is a file.
            SpecdecError: ``overwrite`` and ``resume`` together.
        """
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            msg = f"{folder} is a file, not a folder: choose another --output-dir"
            raise OutputExistsError(msg)
        if overwrite and resume:
            msg = (f"resuming and overwriting {folder} contradict each other: resuming keeps "
                   "its finished requests, overwriting deletes them")
            raise SpecdecError(msg)
        if overwrite:
            _delete_run(folder)
        if is_finished(folder) and not (resume and self._reopen(config, retry_failed=retry_failed)):
            msg = (
                f"{folder} already holds a finished run ({METRICS_FILE})"
                + (": there is nothing to resume; choose another --output-dir, or pass "
                   "--overwrite instead of --resume to replace it" if resume else
                   ": choose another --output-dir, or pass --overwrite to replace it")
            )
            raise OutputExistsError(msg)
        responses = folder / RESPONSES_FILE
        previous = _records_from_responses(responses) if responses.is_file() else []
        if previous and not resume:
            msg = (
                f"{folder} holds an unfinished run ({len(previous)} requests in "
                f"{RESPONSES_FILE}): pass --resume to continue it, or --overwrite to start again"
            )
            raise OutputExistsError(msg)
        if previous:
            if read_config(folder) != config:
                msg = (
                    f"{folder} holds an unfinished run of a different configuration: "
                    f"resume it with --config {folder / CONFIG_FILE}, or choose another "
                    "--output-dir"
                )
                raise OutputExistsError(msg)
            self.run_id = str(read_provenance(folder).get("run_id") or self.run_id)
        if responses.is_file():
            _repair(responses)
        (folder / OUTCOME_FILE).unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        if retry_failed:
            return [r for r in previous if r.error is None]
        return previous

    def _reopen(self, config: ExperimentConfig, *, retry_failed: bool) -> bool:
        """Reopen a finished run with failed requests to retry them; False if it has none.

        Raises:
            OutputExistsError: it has failed requests but ``retry_failed`` is off,
                or it ran another configuration.
        """
        folder = self.folder
        summary = read_summary(folder)
        failed = summary.failed_requests
        if not failed:
            return False
        if not retry_failed:
            total = failed + summary.overall.requests
            msg = (
                f"{folder} holds a finished run in which {failed} of {total} requests failed "
                f"(their errors are in {RESPONSES_FILE}): pass --retry-failed with "
                "--resume to run them again, or choose another --output-dir"
            )
            raise OutputExistsError(msg)
        if read_config(folder) != config:
            msg = (
                f"{folder} holds a run of a different configuration: retry its failed "
                f"requests with --config {folder / CONFIG_FILE}, or choose another --output-dir"
            )
            raise OutputExistsError(msg)
        log.info("retrying the failed requests of a finished run", folder=str(folder),
                 failed=failed)
        # Written again when the retry finishes; until then the run is unfinished.
        (folder / METRICS_FILE).unlink()
        # The retried requests' answers may differ: their margins are scored anew.
        (folder / MARGINS_FILE).unlink(missing_ok=True)
        return True

    def start(self, config: ExperimentConfig, provenance: dict[str, Any]) -> dict[str, Any]:
        """Write ``config.yaml`` and open the record for appending; return the provenance.

        The provenance gains ``run_id``; it is written here once for the run.
        """
        self._config = config
        self._provenance = {**provenance, "run_id": self.run_id}
        atomic_write_text(self.folder / CONFIG_FILE, dump_config(config, self._provenance))
        self._file = (self.folder / RESPONSES_FILE).open("ab")
        return self._provenance

    def append(self, record: RequestRecord) -> None:
        """Write one finished request and make it durable before returning."""
        if self._file is None:
            msg = "RunWriter.append before start"
            raise RuntimeError(msg)
        line = {"schema_version": SCHEMA_VERSION, "run_id": self.run_id, **unstructure(record)}
        self._file.write(orjson.dumps(line) + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def finish(self, summary: RunSummary, records: Sequence[RequestRecord]) -> None:
        """Write ``metrics.json`` atomically: the run is finished."""
        self.close()
        if self._config is None:
            msg = "RunWriter.finish before start"
            raise RuntimeError(msg)
        finished = now()
        head = {
            "schema_version": SCHEMA_VERSION,
            "provenance": {**self._provenance, "finished_at": finished},
            "config": unstructure(self._config),
            "summary": unstructure(summary),
            "outcome": unstructure(Outcome("done", started_at=self.started_at,
                                           finished_at=finished, requests=len(records))),
        }
        atomic_write_bytes(self.folder / METRICS_FILE, _metrics_bytes(head, records))

    def fail(self, exc: BaseException) -> None:
        """Record why the run ended without finishing (its records stay for --resume)."""
        self.close()
        status: Status = "failed" if isinstance(exc, Exception) else "interrupted"
        write_outcome(self.folder, Outcome(
            status, type(exc).__name__, str(exc) or type(exc).__name__,
            started_at=self.started_at, finished_at=now(),
            requests=count_records(self.folder),
        ))

    def close(self) -> None:
        """Close the record file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _metrics_bytes(head: dict[str, Any], records: Sequence[RequestRecord]) -> bytes:
    # The header first, indented; then the requests one per line; the columns
    # last. _metrics_head reads the header without parsing the requests, and
    # _open_columns finds the columns from the end without reading either.
    blob, layout = _columns_bytes(records)
    columns = base64.b64encode(blob)
    head = {**head, "columns_version": _COLUMNS_VERSION, "columns_byteorder": sys.byteorder,
            "columns_layout": layout, "columns_length": len(columns)}
    text = orjson.dumps(head, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    parts = [text.rstrip()[:-1].rstrip(), b",\n  ", _REQUESTS_KEY, b"\n"]
    lines = [orjson.dumps(unstructure(r)) for r in records]
    parts += [b",\n".join(lines), b"\n  ],\n  ", _COLUMNS_KEY, columns, _COLUMNS_END]
    return b"".join(parts)


def _delete_run(folder: Path) -> None:
    """Delete a run's files for ``--overwrite``, saying how many finished requests go."""
    responses = folder / RESPONSES_FILE
    if responses.is_file():
        finished = sum(1 for _ in _read_lines(responses))
        if finished:
            log.warning("--overwrite deletes the finished requests of the run in this folder",
                        folder=str(folder), requests=finished)
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)


def _repair(path: Path) -> None:
    """Cut a partial last line off ``responses.jsonl`` (a crash while writing it)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("dropping a cut line at the end of responses.jsonl", path=str(path))
        with path.open("r+b") as handle:
            handle.truncate(end)
