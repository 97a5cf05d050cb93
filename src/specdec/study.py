"""Studies: several configurations over one benchmark, run as a resumable batch.

A study file (or a list of experiment files) expands into batch items, one per
model x strategy x swept setting x repeat.  Each item runs in its own process
(so each engine's memory is returned and one crash does not take the others
down), into its own folder under the batch folder; ``batch.json`` indexes them.
Running the same batch again skips finished items and resumes a half-finished
one from its ``responses.jsonl``.

With repeats, items run round by round (every setting once per round, A B C A
B C), each round in an order shuffled with the study's ``seed``, recorded in
``batch.json`` and kept on resume, so drift in the machine's speed favours no
setting.  Timed items carry only what their configuration asks for; after the
last one, the scoring pass (:mod:`specdec.scoring`, its own process) reads the
baseline's margins where other settings diverged from it; then a study with
``lossless_check:`` runs the sampled check of each speculative setting that
samples (:mod:`specdec.study_lossless`, each its own process).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson
import structlog
import yaml
from attrs import field, frozen

from specdec import registry, run_folder, scoring, study_lossless
from specdec.benchmark_store import resolve_benchmark
from specdec.benchmarks.loader import load_benchmark
from specdec.config import apply_overrides, config_from_mapping, read_mapping
from specdec.errors import ConfigError, SpecdecError
from specdec.executors import engine_gpus
from specdec.interfaces import (
    Executor,
    ExecutorEvent,
    Job,
    JobFinished,
    JobsRunning,
    JobStarted,
)
from specdec.metrics import Slo
from specdec.models import check_model
from specdec.provenance import collect, now
from specdec.records import SCHEMA_VERSION, BenchmarkConfig, LosslessCheckOptions, StrategySpec
from specdec.runner import resolve_settings
from specdec.serialization import problems, structure, unstructure, write_json
from specdec.study_lossless import CheckStatus, PlannedCheck
from specdec.validators import number, positive

log = structlog.get_logger("specdec.study")

INDEX_FILE = "batch.json"
BASELINE = scoring.BASELINE
AA_SUFFIX = "__aa"
"""Added to a baseline's setting name for its A/A item (``aa_check: true``)."""
SCORE_LOG = "scoring.log"
"""The scoring pass's process output (stdout and stderr), in the batch folder."""
DEFAULT_REPEATS = 3
"""A study's repeats unless it sets its own: the fewest that give an "across runs"
interval and let the A/A check see drift between runs.  On this project's 2-core CPU
(benchmarks/noise.py) three rounds give a speedup to about +-16%; +-5% took 10."""
SWEEP_ALIASES: Mapping[str, str] = {
    "concurrency": "engine.concurrency",
    "request_rate": "engine.request_rate",
}
"""Short names a study's ``sweep:`` accepts for the server engine's load settings, as
``vllm bench serve`` calls them: ``sweep: {concurrency: [1, 2, 4, 8]}`` sweeps
``engine.concurrency``, with the baseline measured at every point."""
NEAR_TIE_THRESHOLD = 0.5
"""Default largest top-2 log-probability margin (nats) at which a divergence from
the baseline counts as a near-tie flip: the largest decode-time margin seen at a
bfloat16 flip (0.125) plus the largest difference between a scoring-pass
(prefill) margin and the decode-time one near a tie (0.25), rounded up to the next
bfloat16 step (see docs/studies.md, "Prefill and decode-time margins")."""


@frozen
class StudyConfig:
    """A study file: models x strategies (x swept options) over one benchmark.

    ``base`` holds experiment settings shared by every run (generation, engine,
    mode, ...).  ``sweep`` sweeps experiment keys given as dotted paths, such as
    ``engine.max_num_seqs`` (``concurrency`` and ``request_rate`` are short for
    ``engine.concurrency`` and ``engine.request_rate``: :data:`SWEEP_ALIASES`).  A
    baseline (strategy ``none``) is added if missing.
    """

    name: str = "study"
    benchmark: BenchmarkConfig = field(factory=BenchmarkConfig)
    models: tuple[str, ...] = ("smollm2-135m",)
    strategies: tuple[StrategySpec, ...] = (StrategySpec(BASELINE),)
    base: Mapping[str, Any] = field(factory=dict)
    sweep: Mapping[str, tuple[Any, ...]] = field(factory=dict)
    repeats: int = field(default=DEFAULT_REPEATS, validator=positive)
    near_tie_threshold: float = field(default=NEAR_TIE_THRESHOLD, validator=number(ge=0))
    aa_check: bool = False
    """Add a second run of each baseline (setting ``<baseline>__aa``, label ``aa_check``)."""
    seed: int = 0
    """Seeds the shuffled order of each round of repeats, and is the run seed
    (``generation.seed``) of sampled items that set none."""
    lossless_check: LosslessCheckOptions | None = None
    """After the batch, check every speculative setting that samples against its
    baseline with ``specdec lossless`` (:mod:`specdec.study_lossless`); None: no check."""
    slo: Slo | None = None
    """Goodput limits (``{ttft_ms, tpot_ms, e2el_ms}``) for the report of a study that sweeps
    ``concurrency`` (:mod:`specdec.concurrency`); None: no goodput."""


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
    order: tuple[str, ...] = ()
    """The item names in the order they run (see :func:`run_order`)."""
    seed: int = 0
    """The seed of that order's shuffles."""
    lossless_checks: tuple[CheckStatus, ...] = ()
    """The study's sampled checks (``lossless_check:``) and how each ended."""


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


def check_item(experiment: Mapping[str, Any]) -> list[str]:
    """What is wrong with one batch item's experiment, checked without starting anything.

    Its whole config, its model (a local path must exist; a bundled alias is not
    prepared, a hub id not looked up) and its strategy's options structured with
    the strategy plugin's ``options_type`` as a run does (unknown options, values
    the strategy's validators refuse), and a named benchmark (it must be stored and
    verified; a file is read when the item runs); vLLM is not imported.  Empty if
    nothing is.
    """
    try:
        config = config_from_mapping(experiment)
        check_model(config.model)
        resolve_benchmark(config.benchmark.path)
        registry.strategy_options(config.strategy.name, config.strategy.options)
    except ConfigError as exc:
        return list(exc.problems)
    except SpecdecError as exc:  # an unknown or broken strategy plugin
        return [str(exc)]
    return []


def _check_items(items: Sequence[BatchItem], source: str, kind: str = "study") -> None:
    """Raise one ConfigError naming every bad item (each setting checked once)."""
    found: list[str] = []
    seen: set[str] = set()
    for item in items:
        if item.setting in seen:
            continue
        seen.add(item.setting)
        found += [f"{kind} item {item.setting}: {p}" for p in check_item(item.experiment)]
    if found:
        raise ConfigError(source, found)


def _seeded(experiment: dict[str, Any], seed: int) -> dict[str, Any]:
    """A sampled item's experiment with the study's seed as its run seed, unless it has one.

    Each request's seed derives from (run seed, request id, turn, repeat)
    (:func:`specdec.engines.requests.request_seed`); greedy items are left as they are.
    """
    generation = experiment.get("generation")
    if not isinstance(generation, Mapping):
        return experiment
    temperature = generation.get("temperature", 0)
    if not isinstance(temperature, int | float) or temperature <= 0 or "seed" in generation:
        return experiment
    return {**experiment, "generation": {**generation, "seed": seed}}


def expand_study(study: StudyConfig) -> list[BatchItem]:
    """Every run of a study, baseline first, each checked as an experiment config.

    With ``aa_check``, each baseline is followed by its A/A item: the same
    experiment under the setting ``<baseline>__aa``, labelled ``aa_check: true``.
    Repeat ``r`` runs with ``repeat: r``; a sampled item (``temperature`` above 0)
    without a ``generation.seed`` gets the study's ``seed``, so its requests'
    seeds derive from (study seed, request id, turn, repeat).

    Every item's config and strategy options are checked (:func:`check_item`)
    before this returns, so a typo in a ``sweep:`` option fails ``--dry-run``
    and the run before its first item, with every bad item named at once.
    """
    study_sweep = _canonical_sweep(study)
    specs = list(study.strategies)
    if not any(s.name == BASELINE for s in specs):
        specs.insert(0, StrategySpec(BASELINE))
    items: list[BatchItem] = []
    benchmark = unstructure(study.benchmark)
    for model, spec in itertools.product(study.models, specs):
        for option_values, engine_values in itertools.product(
            _grid(spec.sweep), _grid(study_sweep)
        ):
            experiment = _merge(study.base, {"model": model, "benchmark": benchmark})
            experiment["strategy"] = {"name": spec.name, **spec.options, **option_values}
            experiment = apply_overrides(
                experiment, [f"{k}={orjson.dumps(v).decode()}" for k, v in engine_values.items()]
            )
            experiment = _seeded(experiment, study.seed)
            labels = {**option_values, **engine_values}
            parts = [_slug(model.rstrip("/").split("/")[-1]), spec.name]
            parts += [f"{k.split('.')[-1]}={_slug(v)}" for k, v in labels.items()]
            setting = "__".join(parts)
            variants = [(setting, labels)]
            if study.aa_check and spec.name == BASELINE:
                variants.append((setting + AA_SUFFIX, {**labels, scoring.AA_LABEL: True}))
            items += [
                BatchItem(f"{name}__r{r}" if study.repeats > 1 else name, name,
                          {**experiment, "repeat": r} if r else experiment, shown, r)
                for name, shown in variants
                for r in range(study.repeats)
            ]
    _check_items(items, f"study {study.name!r}")
    return items


def _canonical_sweep(study: StudyConfig) -> dict[str, tuple[Any, ...]]:
    """The study's ``sweep:`` with :data:`SWEEP_ALIASES` spelt out as dotted paths."""
    out: dict[str, tuple[Any, ...]] = {}
    given: dict[str, str] = {}
    for key, values in study.sweep.items():
        path = SWEEP_ALIASES.get(key, key)
        if path in out:
            msg = (f"{given[path]!r} and {key!r} both sweep {path}: keep one of them "
                   "@ $.sweep")
            raise ConfigError(f"study {study.name!r}", [msg])
        out[path] = values
        given[path] = key
    return out


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
        experiments.append((name, unstructure(config)))
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
    items = [
        BatchItem(f"{name}__r{r}" if repeats > 1 else name, name, experiment, {}, r)
        for name, experiment in experiments
        for r in range(repeats)
    ]
    _check_items(items, "batch", "batch")
    return items


Progress = Callable[[str, int, int], None]
"""Called as (item name, requests done, requests total) while an item runs."""


def run_order(items: Sequence[BatchItem], seed: int = 0) -> list[str]:
    """The order in which ``items`` run: round by round, each round shuffled.

    Round ``r`` holds every setting's repeat ``r``; each round's order is
    shuffled by one ``random.Random(seed)``, the baseline's place included.
    With one round (no repeats) the items keep their listed order, baseline
    first: there is no drift between repeats to even out.
    """
    rounds: dict[int, list[str]] = {}
    for item in items:
        rounds.setdefault(item.repeat, []).append(item.name)
    if len(rounds) <= 1:
        return [item.name for item in items]
    rng = random.Random(seed)  # noqa: S311 - an order to record and repeat, not a secret
    order: list[str] = []
    for repeat in sorted(rounds):
        names = rounds[repeat]
        rng.shuffle(names)
        order += names
    return order


def _recorded_order(output_base: Path, items: Sequence[BatchItem]) -> tuple[list[str], int] | None:
    """The order (and seed) an earlier run of this batch recorded, if it has these items."""
    if not (output_base / INDEX_FILE).is_file():
        return None
    try:
        index = read_index(output_base)
    except SpecdecError:
        return None
    if sorted(index.order) != sorted(i.name for i in items):
        return None
    return list(index.order), index.seed


def _recorded_statuses(output_base: Path) -> dict[str, ItemStatus]:
    """Each item's status as an earlier run of this batch recorded it (its stamps, its note)."""
    if not (output_base / INDEX_FILE).is_file():
        return {}
    try:
        return {s.name: s for s in read_index(output_base).items}
    except SpecdecError:
        return {}


def _changed_settings(output_base: Path, items: Sequence[BatchItem]) -> list[str]:
    """The finished items whose folders ran other settings than the items ask now, each said.

    A batch resumed after its study file changed would otherwise keep those runs as
    done and mix two settings under one name.  Sinks are not compared: where records
    also go does not change what was measured.
    """
    changed: list[str] = []
    for item in items:
        folder = output_base / item.name
        if not run_folder.is_finished(folder):
            continue
        try:
            mine = unstructure(resolve_settings(
                config_from_mapping(item.experiment, f"batch item {item.name}")))
        except SpecdecError:
            continue  # it cannot run now (a plugin gone, say): its finished run stays as it is
        theirs = unstructure(run_folder.read_config(folder))
        differ = sorted(k for k in (set(mine) | set(theirs)) - {"sinks"}
                        if mine.get(k) != theirs.get(k))
        if differ:
            changed.append(f"{item.name} ({', '.join(differ)})")
    return changed


_SHOWN_CHANGES = 5


def _initial_statuses(output_base: Path, items: Sequence[BatchItem]) -> dict[str, ItemStatus]:
    """Each item's status before the batch (re)starts, by name.

    Refuses a folder whose finished runs ran other settings than the items ask
    now (:func:`_changed_settings`).  A finished item keeps what the earlier run
    recorded of it: its stamps and any note.
    """
    changed = _changed_settings(output_base, items)
    if changed:
        more = len(changed) - _SHOWN_CHANGES
        shown = "; ".join(changed[:_SHOWN_CHANGES]) + (f"; and {more} more" if more > 0 else "")
        msg = (f"{output_base} holds finished runs of other settings than the batch asks now: "
               f"{shown}. The study file changed since they ran: run it into another "
               "--output-base, or delete those folders to measure them again")
        raise SpecdecError(msg)
    statuses = {item.name: ItemStatus(
        item.name, item.setting, item.experiment["strategy"]["name"],
        str(item.experiment.get("model")), item.repeat, item.labels,
    ) for item in items}
    for item_name, before in _recorded_statuses(output_base).items():
        status = statuses.get(item_name)
        if (status is not None and before.status == "done" and before.setting == status.setting
                and run_folder.is_finished(output_base / item_name)):
            statuses[item_name] = attrs.evolve(
                status, status="done", started_at=before.started_at,
                finished_at=before.finished_at, error=before.error)
    return statuses


def _recorded_checks(output_base: Path, checks: Sequence[PlannedCheck]) -> dict[str, CheckStatus]:
    """Each check's status as an earlier run of this batch recorded it (same settings), else new.

    So an interrupted rerun keeps saying which checks had finished or failed.
    """
    recorded: dict[str, CheckStatus] = {}
    if (output_base / INDEX_FILE).is_file():
        try:
            recorded = {c.setting: c for c in read_index(output_base).lossless_checks}
        except SpecdecError:
            recorded = {}
    out: dict[str, CheckStatus] = {}
    for check in checks:
        new = CheckStatus(check.setting, check.baseline, check.settings)
        earlier = recorded.get(check.setting, new)
        # One recorded running was cut off: it is pending again.
        same = (earlier.settings, earlier.baseline) == (check.settings, check.baseline)
        out[check.setting] = earlier if same and earlier.status != "running" else new
    return out


def run_batch(
    items: Sequence[BatchItem],
    output_base: Path,
    *,
    name: str = "batch",
    near_tie_threshold: float = NEAR_TIE_THRESHOLD,
    on_item: Callable[[ItemStatus], None] | None = None,
    on_progress: Progress | None = None,
    poll_s: float = 0.5,
    seed: int = 0,
    checks: Sequence[PlannedCheck] = (),
    executor: Executor | None = None,
) -> BatchIndex:
    """Run every item in its own process; resume what a previous call left; score; check.

    Items run in :func:`run_order` (with ``seed``), or in the order
    ``batch.json`` recorded when the batch is resumed, by ``executor`` (default:
    the ``local`` one, one process after another here; a cluster's may run
    several at once).  Returns the index (also written to ``batch.json`` as
    every item starts and ends).  A failed item is recorded with its error and
    the batch goes on.  Last, the scoring pass (:func:`run_scoring`) reads the
    baselines' margins where other settings diverged; if it fails, the batch
    still finishes and its divergences stay unclassified, with the reason.  Then
    each of ``checks``, the study's sampled checks, runs in its own process
    (:func:`run_checks`) unless already finished.
    """
    if output_base.exists() and not output_base.is_dir():
        msg = f"{output_base} is a file, not a folder: choose another batch folder"
        raise SpecdecError(msg)
    executor = executor if executor is not None else registry.executors.create("local")
    output_base.mkdir(parents=True, exist_ok=True)
    (output_base / "configs").mkdir(exist_ok=True)
    executor.check_storage(output_base)
    provenance = collect()
    statuses = _initial_statuses(output_base, items)
    recorded = _recorded_order(output_base, items)
    order, seed = recorded if recorded is not None else (run_order(items, seed), seed)
    by_name = {item.name: item for item in items}
    check_statuses = _recorded_checks(output_base, checks)

    def save() -> BatchIndex:
        index = BatchIndex(name, tuple(statuses.values()), near_tie_threshold,
                           provenance=provenance, order=tuple(order), seed=seed,
                           lossless_checks=tuple(check_statuses.values()))
        write_json(output_base / INDEX_FILE, index)
        return index

    jobs, totals = _item_jobs(output_base, [by_name[n] for n in order], statuses)
    save()

    _follow_items(executor.run(jobs, poll_s), statuses, save, on_item,
                  _progress(on_progress, totals))
    index = save()
    run_scoring(output_base, index, executor, poll_s,
                gpus=max((_experiment_gpus(i.experiment) for i in items), default=0))
    if checks:
        run_checks(output_base, checks, check_statuses, save, poll_s, executor=executor)
        index = save()
    return index


def _progress(on_progress: Progress | None, totals: Mapping[str, int]) -> Callable[[Job], None]:
    """Report a running item's records so far (of ``totals``) to ``on_progress``, if any."""
    def progress(job: Job) -> None:
        if on_progress is not None:
            on_progress(job.name, run_folder.count_records(job.log.parent), totals[job.name])
    return progress


def _follow_items(events: Generator[ExecutorEvent, None, None], statuses: dict[str, ItemStatus],
                  save: Callable[[], BatchIndex], on_item: Callable[[ItemStatus], None] | None,
                  progress: Callable[[Job], None]) -> None:
    """Record each item's job as its executor reports it starting and ending.

    Closes ``events`` at the end, or when interrupted: the executor stops
    whatever still runs.
    """
    try:
        for event in events:
            if isinstance(event, JobsRunning):
                for job in event.jobs:
                    progress(job)
                continue
            status = statuses[event.job.name]
            if isinstance(event, JobStarted):
                statuses[event.job.name] = attrs.evolve(status, status="running",
                                                        started_at=now(), error=None)
                save()
                log.info("batch item started", item=event.job.name)
                continue
            progress(event.job)
            statuses[event.job.name] = status = _ended(status, event)
            save()
            if on_item is not None:
                on_item(status)
    finally:
        events.close()


def _item_jobs(output_base: Path, items: Sequence[BatchItem],
               statuses: dict[str, ItemStatus]) -> tuple[list[Job], dict[str, int]]:
    """The jobs of the items not finished (in ``items``' order) and each one's prompt count.

    Each gets its experiment file under ``configs/``; a finished item is marked done.
    """
    jobs: list[Job] = []
    totals: dict[str, int] = {}
    for item in items:
        folder = output_base / item.name
        if run_folder.is_finished(folder):
            statuses[item.name] = attrs.evolve(statuses[item.name], status="done")
            continue
        config_file = output_base / "configs" / f"{item.name}.yaml"
        config_file.write_text(yaml.safe_dump(dict(item.experiment), sort_keys=False),
                               encoding="utf-8")
        bench = item.experiment.get("benchmark") or {}
        totals[item.name] = len(load_benchmark(
            resolve_benchmark(bench.get("path")),
            bench.get("format"), limit=bench.get("limit"), categories=bench.get("categories"),
            per_category=bench.get("per_category"),
        ))
        jobs.append(Job(item.name, item_args(config_file, folder), folder / RUN_LOG,
                        _experiment_gpus(item.experiment)))
    return jobs, totals


def item_args(config_file: Path, folder: Path) -> tuple[str, ...]:
    """The command (after the interpreter) that runs one item: ``specdec run --resume``."""
    return ("-m", "specdec", "run", "--config", str(config_file.resolve()),
            "--output-dir", str(folder.resolve()), "--resume", "--log-format", "json")


def _experiment_gpus(experiment: Mapping[str, Any]) -> int:
    """The GPUs an item's engine occupies (0 if its config cannot tell: its run says why)."""
    try:
        config = config_from_mapping(experiment, "batch item")
    except SpecdecError:
        return 0
    return engine_gpus(config.engine)


def _ended(status: ItemStatus, event: JobFinished) -> ItemStatus:
    """An item's status once its job has ended, from its exit code and its folder."""
    folder = event.job.log.parent
    if event.code == 0:
        return attrs.evolve(status, status="done", finished_at=now())
    if run_folder.is_finished(folder):
        # A run with failed requests still finishes (and exits 1): done, with a note.
        ended = attrs.evolve(status, status="done", finished_at=now(),
                             error=_failed_requests(folder))
        log.warning("batch item finished with failed requests", item=status.name,
                    error=ended.error)
        return ended
    error = (_item_error(folder, event.code) if event.code is not None
             else f"{event.error}; see {event.job.log}")
    log.error("batch item failed", item=status.name, error=error)
    return attrs.evolve(status, status="failed", finished_at=now(), error=error)


def run_checks(output_base: Path, checks: Sequence[PlannedCheck],
               statuses: dict[str, CheckStatus], save: Callable[[], BatchIndex],
               poll_s: float = 0.5, *, executor: Executor | None = None) -> None:
    """Run each sampled check (``specdec lossless``) in its own process, unless finished.

    A check is finished when its folder holds a ``lossless.json`` of its
    settings; else it runs (again) whole, by ``executor`` (default: the local
    one).  A check that ends without one, or with an exit code the command
    gives no outcome, is recorded as failed with its error, like an item, and
    the next check runs.  ``statuses`` (by setting) are updated, and ``save``
    called, as each check starts and ends.
    """
    executor = executor if executor is not None else registry.executors.create("local")
    jobs: list[Job] = []
    by_job: dict[str, PlannedCheck] = {}
    for check in checks:
        folder = study_lossless.check_folder(output_base, check.setting)
        status = statuses[check.setting]
        done = study_lossless.finished(folder, check.settings)
        if done is not None:
            statuses[check.setting] = attrs.evolve(status, status="done", outcome=done.outcome,
                                                   error=None)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        (folder / study_lossless.EXPERIMENT_FILE).write_text(
            yaml.safe_dump(dict(check.experiment), sort_keys=False), encoding="utf-8")
        command = study_lossless.command(check, folder)
        job = Job(f"lossless check of {check.setting}", tuple(command[1:]), folder / RUN_LOG,
                  _experiment_gpus(check.experiment))
        jobs.append(job)
        by_job[job.name] = check
    events = executor.run(jobs, poll_s)
    try:
        for event in events:
            if isinstance(event, JobsRunning):
                continue
            check = by_job[event.job.name]
            status = statuses[check.setting]
            if isinstance(event, JobStarted):
                statuses[check.setting] = attrs.evolve(
                    status, status="running", started_at=now(), finished_at=None,
                    outcome=None, error=None)
                save()
                log.info("lossless check started", setting=check.setting,
                         baseline=check.baseline)
                continue
            folder = event.job.log.parent
            result = study_lossless.finished(folder, check.settings)
            if event.code in study_lossless.CHECK_EXITS and result is not None:
                status = attrs.evolve(status, status="done", outcome=result.outcome,
                                      finished_at=now())
                log.info("lossless check finished", setting=check.setting,
                         outcome=result.outcome)
            else:
                error = (_check_error(folder, event.code) if event.code is not None
                         else f"{event.error}; see {event.job.log}")
                status = attrs.evolve(status, status="failed", finished_at=now(), error=error)
                log.error("lossless check failed", setting=check.setting, error=status.error)
            statuses[check.setting] = status
            save()
    finally:
        events.close()


def _check_error(folder: Path, code: int) -> str:
    """Why a sampled check failed: the command's last message (or its root cause) in its log."""
    log_path = folder / RUN_LOG
    try:
        log_text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        log_text = ""
    message = _last_message(log_text)
    if message is not None and _WRAPPER.search(message) and (cause := root_cause(log_text)):
        message = f"{cause} (root cause; the check ended with {message})"
    if message is not None:
        return f"{message} (exit code {code}; see {log_path})"
    return (f"the check exited with code {code} without a result (killed?); "
            f"see {log_path}")


def run_scoring(output_base: Path, index: BatchIndex, executor: Executor | None = None,
                poll_s: float = 0.2, gpus: int = 0) -> int | None:
    """Run the scoring pass of a batch in its own process, if it has anything to score.

    By ``executor`` (default: the local one), as a job of ``gpus`` (the
    baselines' engines'). Returns its exit code (None: nothing to score, or its
    job gave none).  Where the process ended without recording why a
    baseline's positions are unscored (killed, say), that is recorded for it
    here.
    """
    try:
        jobs = scoring.plan(output_base, index.items)
    except SpecdecError as exc:
        log.warning("the scoring pass could not be planned", error=str(exc))
        return None
    if not jobs:
        return None
    executor = executor if executor is not None else registry.executors.create("local")
    log.info("scoring pass started", baselines=len(jobs),
             positions=sum(len(j.wanted) for j in jobs))
    log_path = output_base / SCORE_LOG
    job = Job("scoring pass", ("-m", "specdec", "score", str(output_base.resolve()),
                               "--log-format", "json"), log_path, gpus)
    ended = JobFinished(job, None, "its executor gave no exit code")
    events = executor.run([job], poll_s)
    try:
        for event in events:
            if isinstance(event, JobFinished):
                ended = event
    finally:
        events.close()
    code = ended.code
    if code != 0:
        why = (f"the scoring pass exited with code {code}" if code is not None
               else f"the scoring pass failed: {ended.error}")
        left = scoring.plan(output_base, index.items)
        for planned in left:
            if planned.scored is None or planned.scored.error is None:
                scoring.record_failure(planned, f"{why}; see {log_path}")
        log.error("the scoring pass failed; divergences without a margin stay unclassified",
                  code=code, error=ended.error, log=str(log_path))
    return code


def _failed_requests(folder: Path) -> str:
    try:
        failed = run_folder.read_summary(folder).failed_requests
    except SpecdecError as exc:
        return str(exc)
    return (f"{failed} requests failed; their errors are in "
            f"{folder / run_folder.RESPONSES_FILE}")


RUN_LOG = "run.log"
"""Each item's process output (stdout and stderr), in its folder."""

_WRAPPER = re.compile(r"see (the )?root cause above", re.IGNORECASE)
"""How an error that only points at an earlier one says so (vLLM's engine start)."""
_EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt): \S.*$")
"""The last line of a Python traceback: ``SomeError: message``."""
_LOG_PREFIX = re.compile(
    r"^(?:\([\w.-]+ pid=\d+\) )?"
    r"(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) \d\d-\d\d \d\d:\d\d:\d\d \[[^\]]*\] )?")
"""vLLM's own log prefix, ``(EngineCore_DP0 pid=123) ERROR 12-01 10:00:05 [core.py:1510] ``
(where its engine-core process logs in vLLM's format rather than through specdec's)."""


def _log_lines(text: str) -> list[str]:
    """The lines of an item's ``run.log`` since its last start, as printed.

    A JSON log line gives its event and its ``exception`` (the traceback text);
    vLLM's log prefixes are taken off.
    """
    header = text.rfind("\n# ")
    lines: list[str] = []
    for raw in text[header + 1 if header >= 0 else 0:].splitlines():
        line = _LOG_PREFIX.sub("", raw.rstrip(), count=1)
        if line.startswith("{"):
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError:
                item = None
            if isinstance(item, dict):
                lines += [str(item.get("event", ""))]
                lines += str(item.get("exception") or "").splitlines()
                continue
        lines.append(line)
    return lines


def root_cause(log_text: str) -> str | None:
    """The exception that a wrapper error in ``log_text`` points at ("see root cause above").

    The last ``SomeError: message`` line before the first line that says to see
    the root cause above (vLLM's engine core prints its traceback in its own
    process, before the front end's ``RuntimeError`` that only points at it);
    None if there is no such line.
    """
    lines = _log_lines(log_text)
    wrapper = next((i for i, line in enumerate(lines) if _WRAPPER.search(line)), len(lines))
    causes = [line.strip() for line in lines[:wrapper]
              if _EXCEPTION_LINE.match(line.strip()) and not _WRAPPER.search(line)]
    return causes[-1] if causes else None


def _last_message(log_text: str) -> str | None:
    """The CLI's last error message in ``log_text``, whole.

    Its ``specdec: ...`` line and the indented lines after it (a config error's problems).
    """
    lines = _log_lines(log_text)
    starts = [i for i, line in enumerate(lines) if line.startswith("specdec: ")]
    if not starts:
        return None
    first = starts[-1]
    end = first + 1
    while end < len(lines) and lines[end].startswith("  "):
        end += 1
    return "\n".join(lines[first:end]).removeprefix("specdec: ")


def _item_error(folder: Path, code: int) -> str:
    """Why an item's process failed: its root cause, as fully as its folder tells.

    From the outcome its run wrote (the whole message); where that message only
    points at an earlier error ("see root cause above"), the root cause found in
    the item's ``run.log``; with no outcome (the process failed before its run
    began, or was killed), the CLI's last message in ``run.log``.
    """
    log_path = folder / RUN_LOG
    try:
        log_text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        log_text = ""
    outcome = run_folder.read_outcome(folder)
    if outcome is not None and outcome.error is not None:
        error = f"{outcome.error_type}: {outcome.error}"
        if _WRAPPER.search(error) and (cause := root_cause(log_text)):
            return f"{cause} (root cause, from {log_path}; the run ended with {error})"
        return error
    message = _last_message(log_text)
    if message is not None:
        return f"{message} (exit code {code}; see {log_path})"
    return (f"the run exited with code {code} without recording an outcome (killed?); "
            f"see {log_path}")


def read_index(folder: Path) -> BatchIndex:
    """The ``batch.json`` of a batch folder."""
    path = folder / INDEX_FILE
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        msg = f"{folder} is not a batch folder (no {INDEX_FILE})"
        raise SpecdecError(msg) from None
    except orjson.JSONDecodeError as exc:
        raise _damaged_index(path, f"not valid JSON: {exc}") from exc
    try:
        return structure(data, BatchIndex)
    except Exception as exc:  # every structuring failure means the file is not what we wrote
        raise _damaged_index(path, "; ".join(problems(exc))) from exc


def _damaged_index(path: Path, problem: str) -> SpecdecError:
    # run_batch writes the index afresh from its items and skips finished ones.
    return SpecdecError(
        f"{path} is damaged ({problem}); run the same `specdec batch` or `specdec study` "
        "command again: it writes the index anew and skips the items already finished")
