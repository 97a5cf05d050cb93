"""The ``log`` sink: one structured log line per request and one for the run."""

from __future__ import annotations

import structlog

from specdec.interfaces import RunInfo
from specdec.records import RequestRecord, RunSummary
from specdec.registry import PLUGIN_API_VERSION

log = structlog.get_logger("specdec.run")


class LogSink:
    """Emit structlog events (console or JSON, as :mod:`specdec.logs` set up)."""

    name = "log"
    plugin_api_version = PLUGIN_API_VERSION

    def __init__(self) -> None:
        """Start unbound."""
        self._log = log

    def open(self, run: RunInfo) -> None:
        """Bind the run's folder and strategy to every line."""
        self._log = log.bind(run=str(run.output_dir), strategy=run.config.strategy.name)
        self._log.info("run started", model=run.config.model, mode=run.config.mode)

    def record(self, record: RequestRecord) -> None:
        """Log one finished request, or one that failed (a warning with its error)."""
        if record.error is not None:
            self._log.warning("request failed", id=record.id, category=record.category,
                              finished_turns=len(record.turns), error=record.error)
            return
        drafted = [t.spec for t in record.turns if t.spec is not None]
        accepted = sum(s.num_accepted_tokens for s in drafted)
        draft_tokens = sum(s.num_draft_tokens for s in drafted)
        self._log.info(
            "request finished",
            id=record.id,
            category=record.category,
            turns=len(record.turns),
            output_tokens=record.output_tokens,
            walltime_s=round(record.walltime_s, 4),
            accepted_tokens=accepted if drafted else None,
            draft_tokens=draft_tokens if drafted else None,
        )

    def close(self, summary: RunSummary | None) -> None:
        """Log the run's headline figures, or that it failed."""
        if summary is None:
            self._log.warning("run ended without a summary")
            return
        spec = summary.engine_spec or summary.overall.spec
        self._log.info(
            "run finished",
            requests=summary.overall.requests,
            failed_requests=summary.failed_requests,
            output_tokens=summary.overall.output_tokens,
            elapsed_s=round(summary.elapsed_s, 3),
            throughput_tokens_per_s=round(summary.throughput_tokens_per_s, 2),
            mean_tokens_per_s=round(summary.overall.tokens_per_s_mean, 2),
            acceptance_rate=spec.acceptance_rate if spec else None,
            mean_acceptance_length=spec.mean_acceptance_length if spec else None,
        )
