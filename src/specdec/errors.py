"""Errors that specdec raises for the user to read.

Every error says what went wrong, where (file, line, config path) and what to do
next.  The command line prints :class:`SpecdecError` messages without a traceback
and exits non-zero; anything else is a bug: the command line saves its traceback
in a file and prints one line naming it (``SPECDEC_TRACEBACK=1`` re-raises it).
"""

from __future__ import annotations


class SpecdecError(Exception):
    """Base class of every error meant for the user rather than a developer."""


class ConfigError(SpecdecError):
    """A configuration file or override is invalid.

    ``problems`` holds one ``message @ $.path`` line per problem.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        """Record the source (file name or ``--set``) and its problems."""
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid configuration in {source}:\n{lines}")


class BenchmarkError(SpecdecError):
    """A benchmark file cannot be read, or its content is invalid."""


class StrategyError(SpecdecError):
    """A speculation strategy's options do not fit the target model or vLLM."""


class ModelError(SpecdecError):
    """A model path or bundled model alias cannot be resolved or prepared."""


class EngineError(SpecdecError):
    """The inference engine is missing or failed in a way the user can act on."""


class CalibrationError(SpecdecError):
    """Runs cannot calibrate a cost model, or a calibration cannot predict what is asked."""


class UsageError(SpecdecError):
    """A command line asks for something contradictory or incomplete (exit 2)."""


class ReplayError(SpecdecError):
    """A finished run cannot be replayed with the asked strategy or settings."""


class OutputExistsError(SpecdecError):
    """An output folder already holds a finished run."""


class PluginError(SpecdecError):
    """A plugin is broken, duplicated, or does not satisfy its interface."""


class UnknownPluginError(PluginError, LookupError):
    """No plugin of the asked kind has the asked name."""


class InvalidOptionError(ValueError):
    """Raised by option validators; its message is shown to the user as it is.

    ``field`` names the option the message is about, so that it is located at that
    option's path (``@ $.generation.temperature``) rather than its section's.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        """Keep the message and the option it is about."""
        super().__init__(message)
        self.field = field
