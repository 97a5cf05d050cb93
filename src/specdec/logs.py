"""One log pipeline: specdec's structlog events and every standard-library record.

:func:`configure` sends structlog's events through the standard library's
``logging`` to one handler on the root logger, whose
:class:`structlog.stdlib.ProcessorFormatter` runs the same processors over
records from any other library (vLLM's ``vllm.*`` loggers, transformers, ...).
So ``--log-format json`` writes JSON lines only, and the console format looks the
same whoever logged.

vLLM sets up its own handler (plain text, on stdout) when an engine starts, and
again in each engine process it spawns; the spawned processes know nothing of
this process's handlers. Both read ``VLLM_LOGGING_CONFIG_PATH``, a
:func:`logging.config.dictConfig` file, so :func:`configure` writes one that
installs this module's handler (:func:`vllm_config_path`) and points the
variable at it: vLLM's own set-up then installs our formatter, in this process
and, through the inherited environment, in the engine core and its workers.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal, TextIO

import orjson
import structlog
from structlog.typing import EventDict

from specdec.files import atomic_write_text
from specdec.models import home

LogFormat = Literal["console", "json"]

VLLM_DEFAULT_LEVEL = "WARNING"
"""vLLM's threshold unless ``VLLM_LOGGING_LEVEL`` says otherwise: it logs every engine
step at INFO, and specdec shows its own progress."""

VLLM_CONFIG_FOLDER = "logging"
"""The folder under specdec's cache folder (:func:`specdec.models.home`) for vLLM's file."""

_configured: tuple[LogFormat, int] | None = None


def _shared_processors() -> list[structlog.typing.Processor]:
    # Run on structlog's events before they enter logging, and on other libraries'
    # records inside the formatter, so both carry the same keys.
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _add_process(_: Any, __: str, event_dict: EventDict) -> EventDict:
    # vLLM's record factory names the process a record came from (EngineCore_DP0,
    # VllmWorker ...); several processes share one stderr, so keep the name.
    record = event_dict.get("_record")
    name = getattr(record, "vllm_process_name", None)
    if name is not None and name != "MainProcess":
        event_dict["process"] = name
    return event_dict


class StderrHandler(logging.StreamHandler[TextIO]):
    """A handler writing to whatever ``sys.stderr`` is when a record arrives.

    Looking it up per record keeps lines above a rich progress bar, which swaps
    ``sys.stderr`` while it is drawn, and follows pytest's capture.
    """

    def __init__(self, fmt: LogFormat = "console") -> None:
        """A handler formatting every record as ``fmt`` (see :func:`formatter`)."""
        super().__init__(sys.stderr)
        self.setFormatter(formatter(fmt))
        self.addFilter(_below_vllm_level)

    @property
    def stream(self) -> TextIO:
        """The current ``sys.stderr``."""
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        # logging assigns the stream in __init__ and setStream; the live lookup wins.
        pass


def engine_process_handler(fmt: LogFormat = "console") -> StderrHandler:
    """The handler vLLM installs from :func:`vllm_logging_config`, in this process and its own.

    It also routes Python warnings (torch's deprecations ...) into logging, as
    :func:`configure` does here, so they are formatted like every other line.
    """
    logging.captureWarnings(capture=True)
    return StderrHandler(fmt)


def formatter(fmt: LogFormat = "console") -> structlog.stdlib.ProcessorFormatter:
    """The formatter that renders structlog events and foreign records alike as ``fmt``."""
    renderer: list[structlog.typing.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if fmt == "json"
        else [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(), _add_process],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )


def _below_vllm_level(record: logging.LogRecord) -> bool:
    # vLLM ignores VLLM_LOGGING_LEVEL once it is given a config file, so apply it
    # here. Read per record: the offline engine may set it after configure().
    if not record.name.startswith("vllm"):
        return True
    level = logging.getLevelName(os.environ.get("VLLM_LOGGING_LEVEL", VLLM_DEFAULT_LEVEL))
    return record.levelno >= (level if isinstance(level, int) else logging.INFO)


def adopt_library_loggers() -> None:
    """Route libraries' own console loggers (torch's, transformers') to the root handler.

    torch and transformers give their loggers a stream handler of their own and
    stop propagation when imported, so their lines would print in their format
    beside ours (plain text in a JSON log).  Their stream handlers are removed
    and propagation turned back on; their levels are left as they set them.
    :func:`configure` calls this, and the offline engine again once vLLM (which
    imports both) is imported.
    """
    if _configured is None:
        return
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger) or logger.propagate:
            continue
        streams = [h for h in logger.handlers if type(h) is logging.StreamHandler]
        if streams:
            for handler in streams:
                logger.removeHandler(handler)
            logger.propagate = True


def configure(fmt: LogFormat | None = None, level: int = logging.INFO) -> None:
    """Send every log line to stderr as console text or JSON (``SPECDEC_LOG_FORMAT``).

    Call it once, early. Calling it again with the same format and level does
    nothing; a different one replaces the earlier set-up.
    """
    global _configured  # noqa: PLW0603 - logging is process-wide state by nature
    chosen: LogFormat = fmt or ("json" if os.environ.get("SPECDEC_LOG_FORMAT") == "json"
                                else "console")
    if _configured == (chosen, level):
        return
    structlog.configure(
        processors=[*_shared_processors(),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(handler)
    root.addHandler(StderrHandler(chosen))
    root.setLevel(level)
    logging.captureWarnings(capture=True)
    _point_vllm_at(chosen, level)
    _configured = (chosen, level)
    adopt_library_loggers()


def vllm_config_path(fmt: LogFormat, level: int) -> Path:
    """The :func:`vllm_logging_config` file for ``fmt`` and ``level``, in specdec's cache folder.

    One file per format and level, shared by every specdec process of the user:
    its content never changes, so nothing is left behind per run, even by a run
    that is killed.
    """
    return home() / VLLM_CONFIG_FOLDER / f"vllm-{fmt}-{level}.json"


def _point_vllm_at(fmt: LogFormat, level: int) -> None:
    if os.environ.get("VLLM_CONFIGURE_LOGGING", "1") == "0":
        # The user turned vLLM's set-up off (and vLLM refuses a config file then):
        # this process's records still reach our root handler.
        return
    given = os.environ.get("VLLM_LOGGING_CONFIG_PATH")
    # A file of ours came from a parent specdec (a study's item inherits its
    # environment) and may be another format: replace it. Any other is the user's.
    if given is not None and Path(given).parent != home() / VLLM_CONFIG_FOLDER:
        return
    path = vllm_config_path(fmt, level)
    # Atomic: an engine process starting now reads the old file or the new one.
    atomic_write_text(path, orjson.dumps(vllm_logging_config(fmt, level)).decode())
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(path)


def vllm_logging_config(fmt: LogFormat, level: int) -> dict[str, Any]:
    """The :func:`logging.config.dictConfig` that vLLM applies in its processes.

    It puts :class:`StderrHandler` on the root logger and lets ``vllm.*`` records
    propagate to it instead of to vLLM's stdout handler.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {
            "specdec": {"()": f"{__name__}.{engine_process_handler.__name__}", "fmt": fmt},
        },
        "root": {"handlers": ["specdec"], "level": level},
        "loggers": {"vllm": {"handlers": [], "propagate": True}},
    }
