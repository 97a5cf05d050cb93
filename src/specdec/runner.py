"""One experiment, wired end to end.

config -> strategy (check, speculative_config) -> benchmark -> engine ->
per-request records -> sinks -> summary.  Nothing here imports vLLM; the engine
module does, lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import structlog
from attrs import frozen

from specdec import registry, rejection_sampler, run_folder
from specdec.benchmark_store import resolve_benchmark
from specdec.benchmarks.loader import load_benchmark
from specdec.engines import engine_for
from specdec.errors import EngineError, OutputExistsError
from specdec.interfaces import (
    Capabilities,
    Engine,
    EngineFactory,
    EngineRun,
    MetricsSink,
    RunInfo,
    TargetInfo,
)
from specdec.metrics import add_stats, request_spec, summarise
from specdec.models import model_config, resolve_model
from specdec.provenance import collect
from specdec.records import Conversation, ExperimentConfig, RequestRecord, RunSummary
from specdec.run_folder import RECORD_SINK_NAMES, RunWriter
from specdec.serialization import unstructure

log = structlog.get_logger("specdec.runner")


@frozen
class PreparedRun:
    """An experiment checked and resolved, ready for the engine."""

    config: ExperimentConfig
    model_path: Path | str
    target: TargetInfo
    speculative_config: dict[str, Any] | None
    conversations: tuple[Conversation, ...]
    capabilities: Capabilities
    """What the engine of ``config.engine.backend`` reported it offers."""


@frozen
class RunResult:
    """What :func:`run_experiment` returns: where it wrote, and what it measured."""

    output_dir: Path
    config: ExperimentConfig
    speculative_config: dict[str, Any] | None
    records: tuple[RequestRecord, ...]
    summary: RunSummary
    sink_errors: tuple[str, ...] = ()


def resolve_settings(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` as its run records it, checked and written out in full.

    The strategy's options in full (defaults included), strictly structured,
    and a benchmark name replaced by its stored copy's path.

    No engine, no benchmark loading: cheap enough to compare a batch's items with the
    runs already in their folders.
    """
    _, options = registry.strategy_options(config.strategy.name, config.strategy.options)
    return attrs.evolve(
        config,
        strategy=attrs.evolve(config.strategy, options=unstructure(options)),
        benchmark=attrs.evolve(config.benchmark,
                               path=str(resolve_benchmark(config.benchmark.path))),
    )


def prepare_run(config: ExperimentConfig) -> PreparedRun:
    """Check everything that can be checked before the engine starts.

    Structures the strategy's options strictly, loads the benchmark (a benchmark
    name is its verified stored copy, :mod:`specdec.benchmark_store`), resolves
    the model, asks the configured engine backend for its capabilities, runs
    the strategy's pre-flight check against them, adds the ``rejection_sampler``
    section to its ``speculative_config`` (:mod:`specdec.rejection_sampler`,
    checked there) and writes its options out in
    full (defaults included) into the returned config.
    """
    strategy, options = registry.strategy_options(config.strategy.name, config.strategy.options)
    resolved = resolve_settings(config)
    bench = config.benchmark
    conversations = load_benchmark(
        resolve_benchmark(resolved.benchmark.path), bench.format, limit=bench.limit,
        categories=bench.categories,
        per_category=bench.per_category,
    )
    model_path = resolve_model(config.model)
    caps = registry.engines.create(config.engine.backend).capabilities(config)
    target = TargetInfo.for_engine(
        config.model, model_path if isinstance(model_path, Path) else None,
        model_config(model_path), caps,
    )
    strategy.check(options, target)
    spec = rejection_sampler.apply(config.rejection_sampler,
                                   strategy.speculative_config(options, target), target,
                                   config.engine)
    return PreparedRun(resolved, model_path, target, spec, tuple(conversations), caps)


def default_output_dir(config: ExperimentConfig, base: Path = Path("results")) -> Path:
    """A fresh folder name: ``results/<UTC time>-<strategy>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return base / f"{stamp}-{config.name or config.strategy.name}"


class _Sinks:
    """Fan records out to every observer; one failing sink does not stop the others.

    The run folder's record is written by :class:`~specdec.run_folder.RunWriter`
    whatever the sinks; ``json``/``jsonl`` (its files' sink names in earlier
    releases) add nothing.
    """

    def __init__(self, names: Sequence[str], extra: Sequence[MetricsSink]) -> None:
        self.sinks: list[MetricsSink] = [
            registry.sinks.create(n) for n in names if n not in RECORD_SINK_NAMES
        ]
        self.sinks += extra
        self.errors: list[str] = []

    def _each(self, action: str, call: Callable[[MetricsSink], None]) -> None:
        for sink in list(self.sinks):
            try:
                call(sink)
            except Exception as exc:  # a sink's failure must not lose the run
                error = f"sink {sink.name!r} failed in {action}: {type(exc).__name__}: {exc}"
                log.exception("sink failed", sink=sink.name, action=action, error=str(exc))
                self.errors.append(error)
                self.sinks.remove(sink)

    def open(self, run: RunInfo) -> None:
        self._each("open", lambda s: s.open(run))

    def record(self, record: RequestRecord) -> None:
        self._each("record", lambda s: s.record(record))

    def close(self, summary: RunSummary | None) -> None:
        self._each("close", lambda s: s.close(summary))


def _drive(engine: Engine, todo: Sequence[Conversation],
           finished: Callable[[RequestRecord], None],
           on_start: Callable[[int], None] | None) -> EngineRun:
    engine.start()
    try:
        if on_start is not None:
            on_start(len(todo))
        return engine.run(todo, finished)
    finally:
        engine.close()


def _summary(records: list[RequestRecord], previous: list[RequestRecord],
             measured: EngineRun) -> RunSummary:
    """Summarise a run; a resumed run adds its earlier requests' own times and counts."""
    failed = [r for r in records if r.error is not None]
    if len(failed) == len(records):
        msg = (
            f"all {len(records)} requests failed; the first: {failed[0].error}"
            if failed else "the benchmark selection is empty"
        )
        raise EngineError(msg)
    if not previous:
        return summarise(records, measured.elapsed_s, measured.counters)
    elapsed = measured.elapsed_s + sum(r.walltime_s for r in previous)
    counters = measured.counters
    if counters is not None:
        counters = add_stats([counters, *(s for r in previous if (s := request_spec(r)))])
    return attrs.evolve(summarise(records, elapsed, counters), resumed_requests=len(previous))


def run_experiment(
    config: ExperimentConfig,
    output_dir: Path | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    extra_sinks: Sequence[MetricsSink] = (),
    engine_factory: EngineFactory = engine_for,
    on_record: Callable[[RequestRecord], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    retry_failed: bool = False,
) -> RunResult:
    """Run one experiment and return its measurements.

    Writes the run folder (``config.yaml``, ``responses.jsonl`` as requests
    finish, ``metrics.json`` at the end; see :mod:`specdec.run_folder`) into
    ``output_dir`` (a fresh folder under ``results/`` by default), and gives
    every record and the summary to the configured sinks.  A run that fails
    writes its outcome (``outcome.json``) into its folder if that exists.
    ``on_start(n)`` is called with the number of conversations once the engine
    is ready; ``on_record`` after each finishes (progress display).

    ``resume`` continues an interrupted run in ``output_dir``: requests already
    in its ``responses.jsonl`` are kept and not run again, failed ones too.
    With ``retry_failed`` as well, the requests that failed are run again (their
    new records replace the failed ones), also in a run that finished with
    failures.  A request that fails does not end the run: it is recorded with
    its ``error``, the summary counts it in ``failed_requests``, and
    ``metrics.json`` is written if at least one request succeeded.
    """
    out = output_dir or default_output_dir(config)
    writer = RunWriter(out)
    claimed = False
    try:
        prepared = prepare_run(config)
        resolved = prepared.config
        previous = writer.claim(resolved, overwrite=overwrite, resume=resume,
                                retry_failed=retry_failed)
        claimed = True
        result = _execute(prepared, writer, previous, extra_sinks=extra_sinks,
                          engine_factory=engine_factory, on_record=on_record,
                          on_start=on_start)
    except OutputExistsError:
        raise
    except BaseException as exc:
        # A folder the run claimed, or one made for it (a batch makes its items'),
        # says how the run ended; a failure before that creates no folder.
        if claimed or (out.is_dir() and not run_folder.is_finished(out)):
            writer.fail(exc)
        raise
    return result


def _execute(prepared: PreparedRun, writer: RunWriter, previous: list[RequestRecord], *,
             extra_sinks: Sequence[MetricsSink], engine_factory: EngineFactory,
             on_record: Callable[[RequestRecord], None] | None,
             on_start: Callable[[int], None] | None) -> RunResult:
    resolved = prepared.config
    out = writer.folder
    done = {r.id for r in previous}
    todo = [c for c in prepared.conversations if c.id not in done]
    engine = engine_factory(resolved, prepared.model_path, prepared.speculative_config)
    provenance = collect(prepared.capabilities)
    provenance["model_path"] = str(prepared.model_path)
    provenance["speculative_config"] = prepared.speculative_config
    # Each engine's own account of its setup, under its backend's name.
    provenance[prepared.capabilities.backend] = engine.describe()
    provenance = writer.start(resolved, provenance)

    sinks = _Sinks(resolved.sinks, extra_sinks)
    sinks.open(RunInfo(out, resolved, provenance, tuple(previous)))
    records: list[RequestRecord] = list(previous)

    def finished(record: RequestRecord) -> None:
        writer.append(record)
        records.append(record)
        sinks.record(record)
        if on_record is not None:
            on_record(record)

    summary: RunSummary | None = None
    try:
        measured = _drive(engine, todo, finished, on_start)
        summary = _summary(records, previous, measured)
        writer.finish(summary, records)
    finally:
        writer.close()
        sinks.close(summary)
    return RunResult(out, resolved, prepared.speculative_config, tuple(records), summary,
                     tuple(sinks.errors))
