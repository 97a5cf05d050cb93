"""The three plugin interfaces: Benchmark, SpeculationStrategy and MetricsSink.

A plugin is a class named by an entry point in one of the groups
``specdec.strategies``, ``specdec.benchmarks`` or ``specdec.sinks``.  The
registry instantiates it with no arguments and checks the instance against the
Protocol of its kind (see ``docs/plugins.md``).  Built-ins are plugins too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from attrs import field, frozen

from specdec.records import (
    Conversation,
    ExperimentConfig,
    RequestRecord,
    RunSummary,
    SpecStats,
)


@frozen
class TargetInfo:
    """What a strategy may check before the engine starts.

    ``config`` is the target model's ``config.json`` (empty for a hub id that is
    not on disk).  ``vllm_version`` is None where vLLM is not installed;
    ``speculative_methods`` and ``speculative_config_fields`` are what the
    installed vLLM's ``SpeculativeConfig`` accepts.
    """

    model: str
    path: Path | None
    config: Mapping[str, Any] = field(factory=dict)
    vllm_version: str | None = None
    speculative_methods: frozenset[str] = frozenset()
    speculative_config_fields: frozenset[str] = frozenset()


@frozen
class RunInfo:
    """The identity of one run, given to every sink when it opens.

    ``resumed`` holds requests an earlier, interrupted session of this run
    already finished (and already gave to the sinks then).
    """

    output_dir: Path
    config: ExperimentConfig
    provenance: Mapping[str, Any]
    resumed: tuple[RequestRecord, ...] = ()


@runtime_checkable
class SpeculationStrategy(Protocol):
    """A speculation method and its settings, turned into vLLM's ``speculative_config``.

    ``options_type`` is an attrs class; config files are structured into it
    strictly, so an unknown or misspelt option is refused with its path.
    """

    name: str
    plugin_api_version: int
    options_type: type[Any]

    def check(self, options: Any, target: TargetInfo) -> None:
        """Raise :class:`specdec.errors.StrategyError` if the options cannot work."""

    def speculative_config(self, options: Any, target: TargetInfo) -> dict[str, Any] | None:
        """Return the ``speculative_config`` dict for vLLM, or None for no speculation."""


@runtime_checkable
class Benchmark(Protocol):
    """A prompt-file format that yields :class:`Conversation` items."""

    name: str
    plugin_api_version: int

    def accepts(self, record: Mapping[str, Any]) -> bool:
        """Tell whether one parsed JSON record is in this format (for detection)."""

    def load(self, path: Path) -> Sequence[Conversation]:
        """Read every conversation of ``path``; raise BenchmarkError on bad input."""


@runtime_checkable
class MetricsSink(Protocol):
    """Where per-request records and the run summary go.

    A fresh instance serves one run: ``open``, then ``record`` for each request as
    it finishes, then ``close`` with the summary.
    """

    name: str
    plugin_api_version: int

    def open(self, run: RunInfo) -> None:
        """Prepare to receive the run's records."""

    def record(self, record: RequestRecord) -> None:
        """Store one finished request (durably, if the sink writes files)."""

    def close(self, summary: RunSummary | None) -> None:
        """Finish; ``summary`` is None when the run failed before it completed."""


@frozen
class EngineRun:
    """What an engine measured around a whole run.

    ``elapsed_s`` is the wall clock of the measured run; ``counters`` the
    engine's speculative counters accumulated during it (None without speculation).
    """

    elapsed_s: float
    counters: SpecStats | None


class Engine(Protocol):
    """An inference engine the runner drives: the offline vLLM engine, or a server."""

    def start(self) -> None:
        """Get ready (load the model, warm up); not measured."""

    def close(self) -> None:
        """Release everything the engine holds."""

    def run(
        self,
        conversations: Sequence[Conversation],
        on_record: Callable[[RequestRecord], None],
    ) -> EngineRun:
        """Answer every conversation, calling ``on_record`` as each one finishes."""


EngineFactory = Callable[[ExperimentConfig, "Path | str", "Mapping[str, Any] | None"], Engine]
"""Builds an engine from the resolved config, the model and the speculative_config."""
