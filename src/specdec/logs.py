"""structlog set-up: human-readable console lines or JSON lines."""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

import structlog

LogFormat = Literal["console", "json"]


def configure(fmt: LogFormat | None = None, level: int = logging.INFO) -> None:
    """Send structlog's lines to stderr as console text or JSON (``SPECDEC_LOG_FORMAT``)."""
    chosen = fmt or os.environ.get("SPECDEC_LOG_FORMAT", "console")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if chosen == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
