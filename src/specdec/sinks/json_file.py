"""The ``json`` sink: ``metrics.json`` with the summary and every request's details."""

from __future__ import annotations

from typing import Any

from specdec.interfaces import RunInfo
from specdec.provenance import now
from specdec.records import SCHEMA_VERSION, RequestRecord, RunSummary
from specdec.registry import PLUGIN_API_VERSION
from specdec.serialization import unstructure, write_json

FILE_NAME = "metrics.json"


class JsonSink:
    """Write ``metrics.json`` when the run closes (atomically).

    Loadable with ``pandas.read_json(path, typ="series")``; its ``requests``
    list with ``pandas.json_normalize``.
    """

    name = "json"
    plugin_api_version = PLUGIN_API_VERSION

    def __init__(self) -> None:
        """Start with no run."""
        self._run: RunInfo | None = None
        self._records: list[RequestRecord] = []

    def open(self, run: RunInfo) -> None:
        """Remember the run."""
        self._run = run
        self._records = list(run.resumed)

    def record(self, record: RequestRecord) -> None:
        """Keep the record for the final file."""
        self._records.append(record)

    def close(self, summary: RunSummary | None) -> None:
        """Write the file; a failed run (no summary) writes nothing here."""
        if self._run is None or summary is None:
            return
        payload: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "provenance": {**self._run.provenance, "finished_at": now()},
            "config": unstructure(self._run.config),
            "summary": unstructure(summary),
            "requests": unstructure(self._records),
        }
        write_json(self._run.output_dir / FILE_NAME, payload)
