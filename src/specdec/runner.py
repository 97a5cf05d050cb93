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
import orjson
import structlog
from attrs import frozen

from specdec import registry
from specdec.benchmarks.loader import default_benchmark_path, load_benchmark
from specdec.config import dump_config, load_config
from specdec.engines import engine_for
from specdec.engines.vllm_offline import Capabilities, capabilities
from specdec.errors import ConfigError, EngineError, OutputExistsError
from specdec.interfaces import (
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
from specdec.serialization import problems, structure, unstructure
from specdec.sinks.json_file import FILE_NAME as METRICS_FILE
from specdec.sinks.jsonl_file import FILE_NAME as RESPONSES_FILE

log = structlog.get_logger("specdec.runner")

CONFIG_FILE = "config.yaml"


@frozen
class PreparedRun:
    """An experiment checked and resolved, ready for the engine."""

    config: ExperimentConfig
    model_path: Path | str
    target: TargetInfo
    speculative_config: dict[str, Any] | None
    conversations: tuple[Conversation, ...]
    capabilities: Capabilities


@frozen
class RunResult:
    """What :func:`run_experiment` returns: where it wrote, and what it measured."""

    output_dir: Path
    config: ExperimentConfig
    speculative_config: dict[str, Any] | None
    records: tuple[RequestRecord, ...]
    summary: RunSummary
    sink_errors: tuple[str, ...] = ()


def prepare_run(config: ExperimentConfig) -> PreparedRun:
    """Check everything that can be checked before the engine starts.

    Structures the strategy's options strictly, loads the benchmark, resolves
    the model, runs the strategy's pre-flight check and writes its options out
    in full (defaults included) into the returned config.
    """
    strategy = registry.strategies.create(config.strategy.name)
    try:
        options = structure(dict(config.strategy.options), strategy.options_type)
    except Exception as exc:
        raise ConfigError(f"strategy {config.strategy.name!r}",
                          problems(exc, "$.strategy")) from exc
    bench = config.benchmark
    path = Path(bench.path) if bench.path else default_benchmark_path()
    conversations = load_benchmark(
        path, bench.format, limit=bench.limit, categories=bench.categories
    )
    model_path = resolve_model(config.model)
    caps = capabilities()
    target = TargetInfo(
        model=config.model,
        path=model_path if isinstance(model_path, Path) else None,
        config=model_config(model_path),
        vllm_version=caps.version,
        speculative_methods=caps.speculative_methods,
        speculative_config_fields=caps.speculative_config_fields,
    )
    strategy.check(options, target)
    spec = strategy.speculative_config(options, target)
    resolved = attrs.evolve(
        config,
        strategy=attrs.evolve(config.strategy, options=unstructure(options)),
        benchmark=attrs.evolve(bench, path=str(path)),
    )
    return PreparedRun(resolved, model_path, target, spec, tuple(conversations), caps)


def default_output_dir(config: ExperimentConfig, base: Path = Path("results")) -> Path:
    """A fresh folder name: ``results/<UTC time>-<strategy>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return base / f"{stamp}-{config.name or config.strategy.name}"


def read_responses(path: Path) -> list[RequestRecord]:
    """The records of a ``responses.jsonl``, ignoring a last line cut by a crash.

    A cut last line is removed from the file, so appending continues cleanly.
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    records: list[RequestRecord] = []
    good = 0
    for line in data.splitlines(keepends=True):
        try:
            raw = orjson.loads(line)
        except orjson.JSONDecodeError:
            break
        raw.pop("schema_version", None)
        raw.pop("provenance", None)
        records.append(structure(raw, RequestRecord))
        good += len(line)
    if good < len(data):
        log.warning("dropping a cut line at the end of responses.jsonl", path=str(path))
        with path.open("r+b") as handle:
            handle.truncate(good)
    return records


def _claim_output(output_dir: Path, config: ExperimentConfig, *, overwrite: bool,
                  resume: bool) -> list[RequestRecord]:
    """Make the output folder ready; return the records of a run being resumed."""
    responses = output_dir / RESPONSES_FILE
    if overwrite:
        for name in (METRICS_FILE, RESPONSES_FILE, CONFIG_FILE):
            (output_dir / name).unlink(missing_ok=True)
    if (output_dir / METRICS_FILE).exists():
        msg = (
            f"{output_dir} already holds a finished run ({METRICS_FILE}): choose another "
            "--output-dir, or pass --overwrite to replace it"
        )
        raise OutputExistsError(msg)
    previous = read_responses(responses)
    if previous and not resume:
        msg = (
            f"{output_dir} holds an unfinished run ({len(previous)} requests in "
            f"{RESPONSES_FILE}): pass --resume to continue it, or --overwrite to start again"
        )
        raise OutputExistsError(msg)
    if previous:
        earlier = load_config(output_dir / CONFIG_FILE)
        if earlier != config:
            msg = (
                f"{output_dir} holds an unfinished run of a different configuration: "
                f"resume it with --config {output_dir / CONFIG_FILE}, or choose another "
                "--output-dir"
            )
            raise OutputExistsError(msg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return previous


class _Sinks:
    """Fan records out to every sink; one failing sink does not stop the others."""

    def __init__(self, names: Sequence[str], extra: Sequence[MetricsSink]) -> None:
        self.sinks: list[MetricsSink] = [registry.sinks.create(n) for n in names]
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
) -> RunResult:
    """Run one experiment on the offline vLLM engine and return its measurements.

    Writes ``config.yaml`` and whatever the configured sinks write into
    ``output_dir`` (a fresh folder under ``results/`` by default).
    ``on_start(n)`` is called with the number of conversations once the engine
    is ready; ``on_record`` after each finishes (progress display).

    ``resume`` continues an interrupted run in ``output_dir``: requests already
    in its ``responses.jsonl`` are kept and not run again.
    """
    prepared = prepare_run(config)
    resolved = prepared.config
    out = output_dir or default_output_dir(resolved)
    previous = _claim_output(out, resolved, overwrite=overwrite, resume=resume)
    done = {r.id for r in previous}
    todo = [c for c in prepared.conversations if c.id not in done]
    engine = engine_factory(resolved, prepared.model_path, prepared.speculative_config)
    provenance = collect(prepared.capabilities.device)
    provenance["model_path"] = str(prepared.model_path)
    provenance["speculative_config"] = prepared.speculative_config
    describe = getattr(engine, "describe", None)
    if callable(describe):
        provenance["server"] = describe()
    (out / CONFIG_FILE).write_text(dump_config(resolved, provenance), encoding="utf-8")

    sinks = _Sinks(resolved.sinks, extra_sinks)
    sinks.open(RunInfo(out, resolved, provenance, tuple(previous)))
    records: list[RequestRecord] = list(previous)

    def finished(record: RequestRecord) -> None:
        records.append(record)
        sinks.record(record)
        if on_record is not None:
            on_record(record)

    summary: RunSummary | None = None
    try:
        measured = _drive(engine, todo, finished, on_start)
        summary = _summary(records, previous, measured)
    finally:
        sinks.close(summary)
    return RunResult(out, resolved, prepared.speculative_config, tuple(records), summary,
                     tuple(sinks.errors))
