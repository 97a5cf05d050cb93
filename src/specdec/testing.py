"""Helpers for testing code that uses specdec: an in-memory sink."""

from __future__ import annotations

from specdec.interfaces import RunInfo
from specdec.records import RequestRecord, RunSummary
from specdec.registry import PLUGIN_API_VERSION


class MemorySink:
    """A sink that keeps everything in memory, for assertions in tests."""

    name = "memory"
    plugin_api_version = PLUGIN_API_VERSION

    def __init__(self) -> None:
        """Start empty."""
        self.run: RunInfo | None = None
        self.records: list[RequestRecord] = []
        self.summary: RunSummary | None = None
        self.closed = False

    def open(self, run: RunInfo) -> None:
        """Remember the run."""
        self.run = run

    def record(self, record: RequestRecord) -> None:
        """Keep the record."""
        self.records.append(record)

    def close(self, summary: RunSummary | None) -> None:
        """Keep the summary."""
        self.summary = summary
        self.closed = True
