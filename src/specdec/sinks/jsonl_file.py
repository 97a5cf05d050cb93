"""The ``jsonl`` sink: ``responses.jsonl``, one line per request, flushed as each finishes."""

from __future__ import annotations

import os
from typing import IO, Any

import orjson

from specdec.interfaces import RunInfo
from specdec.records import SCHEMA_VERSION, RequestRecord, RunSummary
from specdec.registry import PLUGIN_API_VERSION
from specdec.serialization import unstructure

FILE_NAME = "responses.jsonl"


class JsonlSink:
    """Append each finished request to ``responses.jsonl`` and sync it to disk.

    A crash loses nothing already finished.  Each line carries the schema
    version and the run's provenance; ``pandas.read_json(path, lines=True)``
    loads the file.
    """

    name = "jsonl"
    plugin_api_version = PLUGIN_API_VERSION

    def __init__(self) -> None:
        """Start with no file open."""
        self._file: IO[bytes] | None = None
        self._common: dict[str, Any] = {}

    def open(self, run: RunInfo) -> None:
        """Open the file for appending (a resumed run keeps earlier lines)."""
        self._common = {"schema_version": SCHEMA_VERSION, "provenance": dict(run.provenance)}
        self._file = (run.output_dir / FILE_NAME).open("ab")

    def record(self, record: RequestRecord) -> None:
        """Write one line and make it durable before returning."""
        if self._file is None:
            msg = "the jsonl sink was not opened"
            raise RuntimeError(msg)
        line = {**self._common, **unstructure(record)}
        self._file.write(orjson.dumps(line) + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self, summary: RunSummary | None) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
