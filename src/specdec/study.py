"""Studies: several configurations over one benchmark, run as a resumable batch.

A study file (or a list of experiment files) expands into batch items, one per
model x strategy x swept setting x repeat.  Each item runs in its own process
(so each engine's memory is returned and one crash does not take the others
down), into its own folder under the batch folder; ``batch.json`` indexes them.
Running the same batch again skips finished items and resumes a half-finished
one from its ``responses.jsonl``.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson
import structlog
import yaml
from attrs import field, frozen

from specdec import run_folder
from specdec.config import apply_overrides, config_from_mapping, read_mapping
from specdec.errors import ConfigError, SpecdecError
from specdec.provenance import collect, now
from specdec.records import SCHEMA_VERSION, BenchmarkConfig, StrategySpec
from specdec.serialization import problems, structure, unstructure, write_json

log = structlog.get_logger("specdec.study")

INDEX_FILE = "batch.json"
BASELINE = "none"
NEAR_TIE_THRESHOLD = 0.25
"""Default largest top-2 log-probability margin (nats) at which a divergence from
the baseline counts as a near-tie flip (see docs/studies.md)."""


@frozen
class StudyConfig:
    """A study file: models x strategies (x swept options) over one benchmark.

    ``base`` holds experiment settings shared by every run (generation, engine,
    mode, ...).  ``sweep`` sweeps experiment keys given as dotted paths, such as
    ``engine.max_num_seqs``.  A baseline (strategy ``none``) is added if missing.
    """

    name: str = "study"
    benchmark: BenchmarkConfig = field(factory=BenchmarkConfig)
    models: tuple[str, ...] = ("smollm2-135m",)
    strategies: tuple[StrategySpec, ...] = (StrategySpec(BASELINE),)
    base: Mapping[str, Any] = field(factory=dict)
    sweep: Mapping[str, tuple[Any, ...]] = field(factory=dict)
    repeats: int = 1
    near_tie_threshold: float = NEAR_TIE_THRESHOLD


@frozen
class BatchItem:
    """One run of a batch: its folder name, experiment mapping and what it stands for.

    ``setting`` names the configuration (model, strategy, swept values) shared
    by its repeats; ``labels`` are the swept values, for reports.
    """

    name: str
    setting: str
    experiment: Mapping[str, Any]
    labels: Mapping[str, Any] = field(factory=dict)
    repeat: int = 0


@frozen
class ItemStatus:
    """What ``batch.json`` says of one item."""

    name: str
    setting: str
    strategy: str
    model: str
    repeat: int
    labels: Mapping[str, Any]
    status: str = "pending"
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


@frozen
class BatchIndex:
    """``batch.json``: every item of a batch and how it ended."""

    name: str
    items: tuple[ItemStatus, ...]
    near_tie_threshold: float = NEAR_TIE_THRESHOLD
    schema_version: int = SCHEMA_VERSION
    provenance: Mapping[str, Any] = field(factory=dict)


def load_study(path: Path) -> StudyConfig:
    """Read a study file strictly."""
    data = read_mapping(path)
    try:
        return structure(data, StudyConfig)
    except Exception as exc:  # every structuring failure is a config problem
        raise ConfigError(str(path), problems(exc)) from exc


def _slug(value: Any) -> str:
    return str(value).replace("/", "_").replace(" ", "")


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(orjson.dumps(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _grid(sweep: Mapping[str, Sequence[Any]]) -> Iterator[dict[str, Any]]:
    keys = list(sweep)
    for values in itertools.product(*(sweep[k] for k in keys)):
        yield dict(zip(keys, values, strict=True))


def _with_logprobs(experiment: dict[str, Any]) -> dict[str, Any]:
    # The lossless check classifies each divergence by the baseline's top-2
    # margin, so batch runs ask for two log-probabilities unless told otherwise.
    generation = experiment.setdefault("generation", {})
    if generation.get("logprobs") is None:
        generation["logprobs"] = 2
    return experiment


def expand_study(study: StudyConfig) -> list[BatchItem]:
    """Every run of a study, baseline first, each checked as an experiment config."""
    specs = list(study.strategies)
    if not any(s.name == BASELINE for s in specs):
        specs.insert(0, StrategySpec(BASELINE))
    items: list[BatchItem] = []
    benchmark = unstructure(study.benchmark)
    for model, spec in itertools.product(study.models, specs):
        for option_values, engine_values in itertools.product(
            _grid(spec.sweep), _grid(study.sweep)
        ):
            experiment = _with_logprobs(
                _merge(study.base, {"model": model, "benchmark": benchmark})
            )
            experiment["strategy"] = {"name": spec.name, **spec.options, **option_values}
            experiment = apply_overrides(
                experiment, [f"{k}={orjson.dumps(v).decode()}" for k, v in engine_values.items()]
            )
            labels = {**option_values, **engine_values}
            parts = [_slug(model.rstrip("/").split("/")[-1]), spec.name]
            parts += [f"{k.split('.')[-1]}={_slug(v)}" for k, v in labels.items()]
            setting = "__".join(parts)
            config_from_mapping(experiment, f"study item {setting}")
            items += [
                BatchItem(f"{setting}__r{r}" if study.repeats > 1 else setting, setting,
                          experiment, labels, r)
                for r in range(study.repeats)
            ]
    return items


def items_from_configs(paths: Sequence[Path], benchmark: Mapping[str, Any],
                       repeats: int = 1) -> list[BatchItem]:
    """Batch items from experiment files, with a baseline per model added if missing."""
    experiments: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for path in paths:
        data = _merge(read_mapping(path), {"benchmark": benchmark} if benchmark else {})
        config = config_from_mapping(data, str(path))
        name = path.stem
        while name in seen:
            name += "_"
        seen.add(name)
        experiments.append((name, _with_logprobs(unstructure(config))))
    models_with_baseline = {
        e["model"] for _, e in experiments if e["strategy"]["name"] == BASELINE
    }
    for _, experiment in list(experiments):
        if experiment["model"] not in models_with_baseline:
            models_with_baseline.add(experiment["model"])
            baseline = {**experiment, "strategy": {"name": BASELINE}, "name": None}
            name = "baseline"
            if name in seen:
                name = f"baseline-{_slug(str(experiment['model']).rstrip('/').split('/')[-1])}"
            while name in seen:
                name += "_"
            seen.add(name)
            experiments.insert(0, (name, baseline))
    return [
        BatchItem(f"{name}__r{r}" if repeats > 1 else name, name, experiment, {}, r)
        for name, experiment in experiments
        for r in range(repeats)
    ]


Progress = Callable[[str, int, int], None]
"""Called as (item name, requests done, requests total) while an item runs."""


def run_batch(
    items: Sequence[BatchItem],
    output_base: Path,
    *,
    name: str = "batch",
    near_tie_threshold: float = NEAR_TIE_THRESHOLD,
    on_item: Callable[[ItemStatus], None] | None = None,
    on_progress: Progress | None = None,
    poll_s: float = 0.5,
) -> BatchIndex:
    """Run every item in its own process; resume what a previous call left.

    Returns the index (also written to ``batch.json`` after every item).  A
    failed item is recorded with its error and the batch goes on.
    """
    from specdec.benchmarks.loader import (  # noqa: PLC0415 - only needed for counting
        default_benchmark_path,
        load_benchmark,
    )

    output_base.mkdir(parents=True, exist_ok=True)
    (output_base / "configs").mkdir(exist_ok=True)
    provenance = collect()
    statuses: dict[str, ItemStatus] = {}
    for item in items:
        statuses[item.name] = ItemStatus(
            item.name, item.setting, item.experiment["strategy"]["name"],
            str(item.experiment.get("model")), item.repeat, item.labels,
        )

    def save() -> BatchIndex:
        index = BatchIndex(name, tuple(statuses.values()), near_tie_threshold,
                           provenance=provenance)
        write_json(output_base / INDEX_FILE, index)
        return index

    save()
    for item in items:
        folder = output_base / item.name
        status = statuses[item.name]
        if run_folder.is_finished(folder):
            statuses[item.name] = attrs.evolve(status, status="done")
            continue
        config_file = output_base / "configs" / f"{item.name}.yaml"
        config_file.write_text(yaml.safe_dump(dict(item.experiment), sort_keys=False),
                               encoding="utf-8")
        bench = item.experiment.get("benchmark") or {}
        total = len(load_benchmark(
            Path(bench["path"]) if bench.get("path") else default_benchmark_path(),
            bench.get("format"), limit=bench.get("limit"), categories=bench.get("categories"),
        ))
        status = attrs.evolve(status, status="running", started_at=now(), error=None)
        statuses[item.name] = status
        save()
        folder.mkdir(parents=True, exist_ok=True)
        log.info("batch item started", item=item.name)
        code = _run_item(config_file, folder, total, on_progress, poll_s)
        if code == 0:
            status = attrs.evolve(status, status="done", finished_at=now())
        else:
            error = _item_error(folder, code)
            status = attrs.evolve(status, status="failed", finished_at=now(), error=error)
            log.error("batch item failed", item=item.name, error=error)
        statuses[item.name] = status
        save()
        if on_item is not None:
            on_item(status)
    return save()


def _item_error(folder: Path, code: int) -> str:
    """Why an item's process failed, from the outcome its run wrote into its folder."""
    outcome = run_folder.read_outcome(folder)
    if outcome is not None and outcome.error is not None:
        return f"{outcome.error_type}: {outcome.error}"
    return (f"the run exited with code {code} without recording an outcome (killed?); "
            f"see {folder / 'run.log'}")


def _run_item(config_file: Path, folder: Path, total: int, on_progress: Progress | None,
              poll_s: float) -> int:
    command = [sys.executable, "-m", "specdec", "run", "--config", str(config_file),
               "--output-dir", str(folder), "--resume", "--log-format", "json"]
    with (folder / "run.log").open("ab") as run_log:
        run_log.write(f"\n# {now()} {' '.join(command)}\n".encode())
        run_log.flush()
        process = subprocess.Popen(command, stdout=run_log, stderr=subprocess.STDOUT)  # noqa: S603
        try:
            while process.poll() is None:
                if on_progress is not None:
                    on_progress(folder.name, run_folder.count_records(folder), total)
                time.sleep(poll_s)
        except BaseException:
            process.terminate()
            process.wait(timeout=60)
            raise
    if on_progress is not None:
        on_progress(folder.name, run_folder.count_records(folder), total)
    return process.returncode


def read_index(folder: Path) -> BatchIndex:
    """The ``batch.json`` of a batch folder."""
    path = folder / INDEX_FILE
    try:
        return structure(orjson.loads(path.read_bytes()), BatchIndex)
    except FileNotFoundError:
        msg = f"{folder} is not a batch folder (no {INDEX_FILE})"
        raise SpecdecError(msg) from None
