"""Tune: predict every candidate setting from one greedy baseline, then confirm the best.

A tune file names a model, a benchmark, shared settings and the candidate methods
(each with an option grid); the candidates are every method x grid point x
``num_speculative_tokens`` k x swept batch size.  ``specdec tune`` works in one
output folder, in phases, each done once (a rerun resumes at the first phase not
finished; ``docs/prediction.md``, "specdec tune"):

a. the greedy baseline, and its A/A repeat, at each batch size;
b. calibration runs: each drafter at the ``calibration_k`` values;
c. the cost model fitted on those runs (:mod:`specdec.costmodel`), ``calibration.json``;
d. every candidate predicted: replayed over the baseline's token ids
   (:func:`specdec.replay.replay_run`: ngram, ``custom_class`` proposers); a draft
   model replayed from its own greedy continuations of every baseline prefix
   (:func:`specdec.draft_replay.replay_draft_run`, one engine of the draft model in
   this process), or where that cannot run from the calibration runs' measured
   agreement at other k (:func:`specdec.replay.replay_agreement`, bounded where it
   is unknown); from a calibration run's own counts where one measured it (methods
   replay cannot draft, such as EAGLE), or else skipped with the reason;
e. ranked by predicted speedup, overall and per category (``ranking.json``);
f. the top ``confirm`` per batch size run for real (calibration runs that coincide
   count, and are not run again);
g. predicted against measured for every setting run, with the residual
   (measured / predicted - 1) and the measured speedup's interval
   (:func:`specdec.report.build_report` over the folder), a setting per category,
   a k per batch size in the shape of vLLM's dynamic speculation schedule
   (``num_speculative_tokens_per_batch_size``), ``prediction.json``,
   ``prediction.md`` and a plot of predicted speedup over k.

Every real run is an item of a study batch (:func:`specdec.study.run_batch`), so
folders, ``batch.json``, resume and failure records are a study's, and
``specdec report`` reads the folder like any batch.  Only greedy decoding is
predicted: replay needs the baseline's tokens to be every candidate's.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs
import orjson
import structlog
from attrs import field, frozen

from specdec import registry, run_folder
from specdec.config import config_from_mapping, read_mapping
from specdec.costmodel import (
    Calibration,
    Prediction,
    batch_size,
    calibrate_folders,
    drafter_key,
    predict,
    read_calibration,
    read_measured_run,
    require_same_settings,
    residual,
    write_calibration,
)
from specdec.draft_replay import DRAFT_METHODS, replay_draft_run
from specdec.engines import engine_for
from specdec.errors import CalibrationError, ConfigError, EngineError, ReplayError, SpecdecError
from specdec.interfaces import EngineFactory, TargetInfo
from specdec.intervals import Interval
from specdec.metrics import add_stats, request_spec, spec_metrics
from specdec.records import (
    SCHEMA_VERSION,
    BenchmarkConfig,
    RequestRecord,
    SpecStats,
    StrategyConfig,
    StrategySpec,
)
from specdec.replay import (
    AGREEMENT_METHODS,
    DRAFT_LENGTHS,
    ReplayedRun,
    ReplayTokenizer,
    load_tokenizer,
    proposer_for,
    read_known_run,
    replay_agreement,
    replay_run,
)
from specdec.report import OVERALL, Report, build_report
from specdec.serialization import dumps, loads, problems, structure, unstructure, write_json
from specdec.study import (
    BASELINE,
    INDEX_FILE,
    NEAR_TIE_THRESHOLD,
    BatchIndex,
    BatchItem,
    StudyConfig,
    expand_study,
    read_index,
    run_batch,
)
from specdec.validators import distinct_positive, positive
from specdec.validators import number as bounded

log = structlog.get_logger("specdec.tune")

K = "num_speculative_tokens"
BATCH_KEY = "engine.max_num_seqs"
"""The experiment key a tune's ``batch_sizes`` sweep (in batch mode)."""
DEFAULT_CALIBRATION_K = (1, 2, 4)
"""Three k per drafter: the fewest with which every cost-model form can be tested on held-out
runs (``docs/prediction.md``, "Choosing a form")."""
DEFAULT_CONFIRM = 3

TUNE_FILE = "tune.json"
CALIBRATION_FILE = "calibration.json"
RANKING_FILE = "ranking.json"
PREDICTION_FILE = "prediction.json"
REPORT_FOLDER = "report"

RESERVED = ("model", "strategy", "benchmark", "name")
"""Experiment keys a tune file sets itself, never in ``base``."""
RUN_DEFINING = ("model", "benchmark", "base", "repeats", "aa_check")
"""The tune file's keys that decide what every finished run measured: a folder tuned with
other values of them holds other runs."""

Source = Literal["replay", "draft replay", "agreement", "measured counts", "skipped"]
"""How a candidate's prediction was made:

- ``replay``: its drafter replayed over the baseline's token ids (exact counts);
- ``draft replay``: a draft model replayed from its own greedy continuations of every
  baseline prefix, run in the tune's process (exact counts, up to the draft's numerics);
- ``agreement``: a draft model, from the calibration runs' measured agreement at other k
  (counts bounded where no run measured a position; :attr:`Predicted.upper`);
- ``measured counts``: a method replay cannot draft, from its own calibration run's counts
  (a check of the cost model only, not a prediction of acceptance);
- ``skipped``: not predicted; :attr:`Predicted.note` says why."""


# -- the tune file ------------------------------------------------------------------------


@frozen
class TuneConfig:
    """A tune file: what to run and which candidates to predict (``docs/prediction.md``).

    ``methods`` are written like a study's strategies (``name``, options, ``sweep`` of
    options: the grid); ``k`` and ``calibration_k`` are ``num_speculative_tokens`` values,
    which the methods leave out.  ``batch_sizes`` sweeps ``engine.max_num_seqs`` in batch
    mode; empty, every run has ``base``'s mode (sequential by default: batch size 1).
    """

    name: str = "tune"
    model: str = "smollm2-135m"
    benchmark: BenchmarkConfig = field(factory=BenchmarkConfig)
    base: Mapping[str, Any] = field(factory=dict)
    methods: tuple[StrategySpec, ...] = (StrategySpec("ngram"),)
    k: tuple[int, ...] = field(default=tuple(DRAFT_LENGTHS), validator=distinct_positive())
    calibration_k: tuple[int, ...] = field(default=DEFAULT_CALIBRATION_K,
                                           validator=distinct_positive(least=2))
    batch_sizes: tuple[int, ...] = field(default=(), validator=distinct_positive(least=0))
    confirm: int = field(default=DEFAULT_CONFIRM, validator=bounded(ge=0))
    """Settings confirmed with real runs: the top ones by predicted speedup, per batch size."""
    repeats: int = field(default=1, validator=positive)
    aa_check: bool = True
    """Run the baseline twice (the A/A item): the cost model's held-out test needs two."""
    near_tie_threshold: float = field(default=NEAR_TIE_THRESHOLD, validator=bounded(ge=0))
    seed: int = 0


SAMPLING = (
    "tune predicts greedy decoding only: at generation.temperature {t} acceptance is a matter "
    "of chance and the candidates' tokens are not the baseline's, so replay refuses the run "
    "(docs/prediction.md, 'Not modelled'; predicting sampled runs is the sampling issue's "
    "part). Set generation.temperature: 0, or measure sampled settings with `specdec study`")


def _base_problems(base: Mapping[str, Any]) -> list[str]:
    found = [f"the tune file sets {key} itself: move it out of base @ $.base.{key}"
             for key in RESERVED if key in base]
    try:
        experiment = config_from_mapping({k: v for k, v in base.items() if k not in RESERVED},
                                         "base")
    except ConfigError as exc:
        return found + [p.replace("@ $", "@ $.base", 1) for p in exc.problems]
    if experiment.generation.temperature != 0:
        found.append(SAMPLING.format(t=experiment.generation.temperature)
                     + " @ $.base.generation.temperature")
    return found


def _problems(tune: TuneConfig) -> list[str]:
    found = _base_problems(tune.base)
    if tune.batch_sizes:
        if tune.base.get("mode") == "sequential":
            found.append("batch_sizes sweep engine.max_num_seqs in batch mode; base asks for "
                         "mode: sequential: leave mode out @ $.base.mode")
        engine = tune.base.get("engine")
        if isinstance(engine, Mapping) and "max_num_seqs" in engine:
            found.append("batch_sizes sets engine.max_num_seqs: leave it out of base "
                         "@ $.base.engine.max_num_seqs")
    if not tune.methods:
        found.append("list at least one speculative method @ $.methods")
    for index, method in enumerate(tune.methods):
        where = f"$.methods[{index}]"
        if method.name == BASELINE:
            found.append(f"the baseline is always run: list speculative methods only @ {where}")
        if K in method.options or K in method.sweep:
            found.append(f"{K} is the tune file's k and calibration_k, not a method's option "
                         f"@ {where}")
    return found


def check_tune(tune: TuneConfig, source: str = "tune file") -> None:
    """Refuse a tune that cannot run, with one ``message @ $.path`` line per problem.

    Beyond the converter's checks: ``base`` must be a valid experiment without the keys
    the tune sets (``model``, ``strategy``, ``benchmark``, ``name``) and greedy (sampling
    is refused, see :data:`SAMPLING`); ``batch_sizes`` need batch mode and own
    ``engine.max_num_seqs``; methods are speculative and leave k to ``k``.

    Raises:
        ConfigError: listing every problem.
    """
    found = _problems(tune)
    if found:
        raise ConfigError(source, found)


def tune_from_mapping(data: Mapping[str, Any], source: str = "tune file") -> TuneConfig:
    """A tune from a mapping (a tune file's, with ``--set`` overrides), strictly checked.

    Raises:
        ConfigError: an unknown key, a wrong type, or a problem :func:`check_tune` finds.
    """
    try:
        tune = structure(dict(data), TuneConfig)
    except Exception as exc:  # every structuring failure is a config problem
        raise ConfigError(source, problems(exc)) from exc
    check_tune(tune, source)
    return tune


def load_tune(path: Path) -> TuneConfig:
    """Read a tune file (YAML or JSON) strictly; see :func:`tune_from_mapping`."""
    return tune_from_mapping(read_mapping(path), str(path))


# -- the plan: every item and candidate ---------------------------------------------------


@frozen
class Candidate:
    """One setting to predict: a method's grid point at one k and batch size.

    ``family`` names the method and grid point without k (a line of the plot, one
    schedule); ``max_num_seqs`` is the swept batch size, None when not swept.
    """

    setting: str
    family: str
    strategy: StrategyConfig
    k: int
    max_num_seqs: int | None


@frozen
class Plan:
    """What a tune runs and predicts.

    ``items`` holds every batch item a tune may run: baselines, calibration runs and
    every candidate's; ``first`` the settings of phases a and b; ``baselines`` the
    baseline setting of each batch size (None: not swept).
    """

    tune: TuneConfig
    items: tuple[BatchItem, ...]
    groups: tuple[int | None, ...]
    baselines: Mapping[int | None, str]
    first: frozenset[str]
    candidates: tuple[Candidate, ...]

    def items_of(self, settings: frozenset[str] | set[str]) -> list[BatchItem]:
        """The items (every repeat) of ``settings``, in the plan's order."""
        return [item for item in self.items if item.setting in settings]

    def folder(self, output: Path, setting: str) -> Path:
        """The folder of ``setting``'s first repeat."""
        item = min((i for i in self.items if i.setting == setting), key=lambda i: i.repeat)
        return output / item.name


def _family(method: StrategySpec, point: Mapping[str, Any]) -> str:
    labels = [f"{key}={value}" for key, value in point.items()]
    return " ".join([method.name, *labels])


def _grid(sweep: Mapping[str, Sequence[Any]]) -> Iterator[dict[str, Any]]:
    keys = list(sweep)
    for values in itertools.product(*(sweep[key] for key in keys)):
        yield dict(zip(keys, values, strict=True))


def _strategy_key(strategy: Mapping[str, Any]) -> bytes:
    return orjson.dumps(dict(strategy), option=orjson.OPT_SORT_KEYS)


def _drafter(strategy: StrategyConfig) -> str:
    """The cost model's drafter of a strategy, with its options written out in full."""
    _, options = registry.strategy_options(strategy.name, strategy.options)
    return drafter_key(StrategyConfig(strategy.name, unstructure(options)))


def plan_tune(tune: TuneConfig, source: str = "tune file") -> Plan:
    """Every item and candidate of ``tune``, each item checked as a study's is.

    Raises:
        ConfigError: two methods make the same setting, or an item's experiment or
            strategy options are invalid (every bad item named, as
            :func:`specdec.study.expand_study` does).
    """
    families: list[tuple[str, StrategySpec, dict[str, Any]]] = []
    for method in tune.methods:
        families += [(_family(method, point), method, point) for point in _grid(method.sweep)]
    ks = sorted(set(tune.k) | set(tune.calibration_k))
    groups: tuple[int | None, ...] = tuple(tune.batch_sizes) or (None,)
    items: list[BatchItem] = []
    candidates: list[Candidate] = []
    baselines: dict[int | None, str] = {}
    first: set[str] = set()
    for group in groups:
        specs = [StrategySpec(method.name, method.options, {**{key: (value,) for key, value
                                                                 in point.items()}, K: (k,)})
                 for _, method, point in families for k in ks]
        study = StudyConfig(
            name=tune.name, benchmark=tune.benchmark, models=(tune.model,),
            strategies=(StrategySpec(BASELINE), *specs),
            base=tune.base if group is None else {**tune.base, "mode": "batch"},
            sweep={} if group is None else {BATCH_KEY: (group,)},
            repeats=tune.repeats, near_tie_threshold=tune.near_tie_threshold,
            aa_check=tune.aa_check, seed=tune.seed)
        expanded = expand_study(study)
        items += expanded
        by_strategy = {_strategy_key(i.experiment["strategy"]): i.setting for i in expanded}
        baselines[group] = next(i.setting for i in expanded
                                if i.experiment["strategy"] == {"name": BASELINE}
                                and not i.labels.get("aa_check"))
        first |= {i.setting for i in expanded if i.experiment["strategy"]["name"] == BASELINE}
        calibrated: set[str] = set()
        for family, method, point in families:
            strategy = {"name": method.name, **method.options, **point}
            drafter = _drafter(StrategyConfig(method.name, {**method.options, **point}))
            for k in ks:
                setting = by_strategy[_strategy_key({**strategy, K: k})]
                candidates.append(Candidate(setting, family, StrategyConfig(
                    method.name, {**method.options, **point, K: k}), k, group))
                if drafter not in calibrated and k in tune.calibration_k:
                    first.add(setting)
            calibrated.add(drafter)
    _check_unique(candidates, source)
    return Plan(tune, tuple(items), groups, baselines, frozenset(first), tuple(candidates))


def _check_unique(candidates: Sequence[Candidate], source: str) -> None:
    seen: dict[tuple[str, int | None], Candidate] = {}
    found = []
    for candidate in candidates:
        key = (candidate.setting, candidate.max_num_seqs)
        other = seen.setdefault(key, candidate)
        if other is not candidate:
            found.append(f"{other.family} ({dict(other.strategy.options)}) and "
                         f"{candidate.family} ({dict(candidate.strategy.options)}) both make "
                         f"setting {candidate.setting}: give one method a sweep of the option "
                         "they differ in (sweep: {model: [a, b]}) instead of listing it twice "
                         "@ $.methods")
    if found:
        raise ConfigError(source, sorted(set(found)))


def _speculative_config(strategy: StrategyConfig, model: str) -> dict[str, Any]:
    plugin, options = registry.strategy_options(strategy.name, strategy.options)
    spec = plugin.speculative_config(options, TargetInfo(model=model, path=None))
    return dict(spec or {})


def prediction_kind(strategy: StrategyConfig, model: str) -> tuple[Source, str | None]:
    """How a candidate will be predicted, known before anything runs, and why not replay.

    ``replay`` when :func:`specdec.replay.proposer_for` has an offline drafter for its
    ``speculative_config``; ``draft replay`` for :data:`specdec.draft_replay.DRAFT_METHODS`
    (``agreement`` where the draft model cannot be run then); ``agreement`` for the other
    :data:`specdec.replay.AGREEMENT_METHODS`; else ``measured counts`` (only at the k a
    calibration run measures), with the reason replay gave.
    """
    spec = _speculative_config(strategy, model)
    try:
        proposer_for(spec, spec.get("max_model_len") or 2048)
    except ReplayError as exc:
        if spec.get("method") in DRAFT_METHODS:
            return "draft replay", None
        if spec.get("method") in AGREEMENT_METHODS:
            return "agreement", None
        return "measured counts", str(exc)
    return "replay", None


def describe_plan(plan: Plan) -> list[str]:
    """What a tune would do, as lines for ``--dry-run``: phases, items, candidates."""
    tune = plan.tune
    first = plan.items_of(plan.first)
    lines = [f"phases a-b, the baselines and calibration runs ({len(first)}):"]
    lines += [f"  {item.name}" for item in first]
    lines.append(f"phase d, candidates predicted ({len(plan.candidates)}: methods x grid x k "
                 f"{sorted(set(tune.k) | set(tune.calibration_k))} x batch sizes "
                 f"{[g for g in plan.groups if g is not None] or ['as base']}):")
    seen: set[str] = set()
    for candidate in plan.candidates:
        if candidate.family in seen:
            continue
        seen.add(candidate.family)
        kind, reason = prediction_kind(candidate.strategy, tune.model)
        how = {"replay": "replayed over the baseline's token ids",
               "draft replay": ("replayed from the draft model's own greedy continuations "
                                "of every baseline prefix (one engine of it, in this "
                                "process), else from the calibration runs' measured "
                                "agreement at other k"),
               "agreement": "from the calibration runs' measured agreement at other k",
               "measured counts": f"only at calibration_k, from those runs' counts ({reason})",
               "skipped": "skipped"}[kind]
        lines.append(f"  {candidate.family}: {how}")
    lines.append(f"phase f, confirmation: the top {tune.confirm} per batch size by predicted "
                 "speedup, run after the ranking (calibration runs that coincide are reused)")
    return lines


# -- the records a tune writes --------------------------------------------------------------


@frozen
class Predicted:
    """One candidate's prediction, per category and overall (:class:`costmodel.Prediction`).

    ``upper`` holds the optimistic bound of an ``agreement`` prediction (unknown positions
    taken as agreed; ``predictions`` takes them as not).  ``exact``: replay left no draft
    past the known tokens.  ``coverage``: the share of drafted positions whose agreement
    was measured.  ``note``: why it was skipped, or what it rests on.
    """

    setting: str
    family: str
    strategy: StrategyConfig
    k: int
    max_num_seqs: int | None
    source: Source
    note: str | None = None
    batch_size: int | None = None
    predictions: Mapping[str, Prediction] = field(factory=dict)
    upper: Mapping[str, Prediction] = field(factory=dict)
    acceptance_rate: float | None = None
    mean_acceptance_length: float | None = None
    exact: bool | None = None
    coverage: float | None = None
    speculative_config: Mapping[str, Any] = field(factory=dict)

    def speedup(self, category: str = OVERALL) -> float | None:
        """The predicted Spec-Bench speedup in ``category`` (None: not predicted)."""
        prediction = self.predictions.get(category)
        return None if prediction is None else prediction.speedup

    def upper_speedup(self, category: str = OVERALL) -> float | None:
        """The optimistic bound of an agreement prediction (None for the others)."""
        prediction = self.upper.get(category)
        return None if prediction is None else prediction.speedup


@frozen
class Ranking:
    """``ranking.json``: every candidate's prediction (phases d and e).

    ``key`` says what it was computed from (the tune's candidates, the calibration's
    and baselines' run ids); a later tune with the same key reuses it.  ``predict_s``
    is the seconds replay and prediction took.
    """

    key: Mapping[str, Any]
    categories: tuple[str, ...]
    candidates: tuple[Predicted, ...]
    predict_s: float
    schema_version: int = SCHEMA_VERSION


@frozen
class Check:
    """One figure predicted and measured: residual = measured / predicted - 1."""

    predicted: float | None
    measured: float | None
    interval: Interval | None = None
    residual: float | None = None


@frozen
class Confirmed:
    """A candidate that was run (a calibration run, a confirmation, or both): its checks.

    ``speedup`` per category and overall (Spec-Bench), ``throughput`` overall (the
    measured throughput speedup against the predicted speedup of total tokens/s).
    """

    setting: str
    family: str
    k: int
    max_num_seqs: int | None
    source: Source
    roles: tuple[str, ...]
    speedup: Mapping[str, Check]
    throughput: Check
    upper: float | None = None


@frozen
class Recommendation:
    """The setting named for one category: measured (the report's rule) and predicted."""

    category: str
    measured: str | None
    measured_speedup: str | None
    predicted: str | None
    predicted_speedup: float | None
    confirmed: bool


@frozen
class Schedule:
    """One method's k per batch size, as vLLM's ``num_speculative_tokens_per_batch_size``.

    ``k_by_batch_size`` pairs each swept ``max_num_seqs`` with the k predicted fastest
    there (0: no k is predicted to beat the baseline); ``entries`` are vLLM's inclusive
    ``(start, end, k)`` ranges, the first from 1; ``speculative_config`` the whole
    ``speculative_config`` for the ``raw`` strategy (k its largest, the schedule beside).
    """

    family: str
    k_by_batch_size: tuple[tuple[int, int], ...]
    entries: tuple[tuple[int, int, int], ...]
    speculative_config: Mapping[str, Any]


@frozen
class FitSummary:
    """The cost model chosen at one batch size, and its held-out error."""

    batch_size: int
    form: str
    held_out_error: float | None


@frozen
class TuneResult:
    """``prediction.json``: everything a tune predicted, measured and recommends."""

    name: str
    folder: str
    predict_only: bool
    fits: tuple[FitSummary, ...]
    ranking: Ranking
    confirmed: tuple[Confirmed, ...] = ()
    recommendations: tuple[Recommendation, ...] = ()
    schedules: tuple[Schedule, ...] = ()
    failed: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION


def read_ranking(path: Path) -> Ranking:
    """A ``ranking.json`` written by a tune, read strictly."""
    return _read(path, Ranking)


def read_prediction(path: Path) -> TuneResult:
    """A ``prediction.json`` written by a tune, read strictly."""
    return _read(path, TuneResult)


T = TypeVar("T")


def _read(path: Path, cls: type[T]) -> T:
    try:
        data = loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise SpecdecError(f"{path} does not exist: run `specdec tune` first") from exc
    except ValueError as exc:
        raise SpecdecError(f"{path} is not valid JSON ({exc}): run the tune again") from exc
    try:
        return structure(data, cls)
    except Exception as exc:  # every structuring failure means the file is not what we wrote
        lines = "\n".join(f"  {p}" for p in problems(exc))
        raise SpecdecError(f"{path} is damaged:\n{lines}\nrun the tune again") from exc


# -- ranking --------------------------------------------------------------------------------


def ranked(candidates: Sequence[Predicted], category: str = OVERALL,
           max_num_seqs: int | None = None) -> list[Predicted]:
    """The predicted candidates of one batch size, fastest first in ``category``.

    Skipped candidates (and those without a prediction in ``category``) are left out;
    of equal predictions the smaller k comes first (it is the simpler setting).
    """
    shown = [c for c in candidates if c.max_num_seqs == max_num_seqs and c.speedup(category)
             is not None]
    return sorted(shown, key=lambda c: (-(c.speedup(category) or 0.0), c.k, c.setting))


def choose_confirmations(ranking: Ranking, groups: Sequence[int | None],
                         count: int) -> list[Predicted]:
    """The top ``count`` candidates overall at each batch size: the settings to run."""
    return [c for group in groups for c in ranked(ranking.candidates, OVERALL, group)[:count]]


def _acceptance(records: Sequence[RequestRecord]) -> tuple[float | None, float | None]:
    stats = [s for r in records if r.error is None and (s := request_spec(r)) is not None]
    if not stats:
        return None, None
    figures = spec_metrics(add_stats(stats))
    return figures.acceptance_rate, figures.mean_acceptance_length


def _counts(records: Sequence[RequestRecord]) -> dict[str, list[SpecStats]]:
    """Each request's counts per turn, for requests with counts on every turn."""
    out: dict[str, list[SpecStats]] = {}
    for record in records:
        turns = [t.spec for t in record.turns]
        if record.error is None and turns and all(s is not None for s in turns):
            out[record.id] = [s for s in turns if s is not None]
    return out


@frozen
class _Group:
    """One batch size's baseline, as the predictions read it."""

    folder: Path
    records: tuple[RequestRecord, ...]
    size: int
    categories: tuple[str, ...]


def _predictions(calibration: Calibration, strategy: StrategyConfig, group: _Group,
                 spec: Mapping[str, Sequence[SpecStats]]) -> dict[str, Prediction]:
    """Predictions overall and per category over the baseline requests ``spec`` covers."""
    baseline = [r for r in group.records if r.id in spec and len(spec[r.id]) == len(r.turns)]
    if not baseline:
        msg = "no baseline request has counts for every turn: nothing to predict from"
        raise CalibrationError(msg)
    out = {OVERALL: predict(calibration, strategy, baseline,
                            {r.id: spec[r.id] for r in baseline}, size=group.size)}
    for category in group.categories:
        subset = [r for r in baseline if r.category == category]
        if subset:
            out[category] = predict(calibration, strategy, subset,
                                    {r.id: spec[r.id] for r in subset}, size=group.size)
    return out


def _from_run(candidate: Candidate, run: ReplayedRun, source: Source, *,
              calibration: Calibration, group: _Group, note: str | None = None,
              upper: ReplayedRun | None = None) -> Predicted:
    try:
        predictions = _predictions(calibration, run.strategy, group, _counts(run.records))
        bound = ({} if upper is None else
                 _predictions(calibration, upper.strategy, group, _counts(upper.records)))
    except CalibrationError as exc:
        return _skipped(candidate, str(exc), group, dict(run.speculative_config))
    rate, length = _acceptance(run.records)
    return Predicted(candidate.setting, candidate.family, run.strategy, candidate.k,
                     candidate.max_num_seqs, source, note, group.size, predictions, bound,
                     rate, length, run.exact if source in ("replay", "draft replay") else None,
                     run.coverage,
                     dict(run.speculative_config))


def _skipped(candidate: Candidate, reason: str, group: _Group,
             spec: Mapping[str, Any] | None = None) -> Predicted:
    return Predicted(candidate.setting, candidate.family, candidate.strategy, candidate.k,
                     candidate.max_num_seqs, "skipped", reason, group.size,
                     speculative_config=dict(spec or {}))


def _measured(plan: Plan, output: Path, candidate: Candidate) -> Path | None:
    folder = plan.folder(output, candidate.setting)
    return folder if run_folder.is_finished(folder) else None


def _by_counts(plan: Plan, output: Path, candidate: Candidate, *, calibration: Calibration,
               group: _Group, reason: str) -> Predicted:
    """A candidate replay cannot draft: from its own calibration run's counts, if one ran."""
    folder = _measured(plan, output, candidate) if candidate.setting in plan.first else None
    if folder is None:
        return _skipped(candidate, f"{reason}; measured only at calibration_k "
                        f"{list(plan.tune.calibration_k)}", group)
    measured = read_measured_run(folder)
    try:
        predictions = _predictions(calibration, measured.config.strategy, group,
                                   _counts(measured.records))
    except CalibrationError as exc:
        return _skipped(candidate, str(exc), group)
    rate, length = _acceptance(measured.records)
    note = (f"{reason}; its acceptance is its calibration run's ({folder.name}): this checks "
            "the cost model, it does not predict acceptance")
    return Predicted(candidate.setting, candidate.family, measured.config.strategy,
                     candidate.k, candidate.max_num_seqs, "measured counts", note, group.size,
                     predictions, {}, rate, length,
                     speculative_config=_speculative_of(folder))


def _speculative_of(folder: Path) -> dict[str, Any]:
    """The ``speculative_config`` a finished run recorded in its provenance (empty if none)."""
    value = run_folder.read_provenance(folder).get("speculative_config")
    return dict(value) if isinstance(value, Mapping) else {}


def _by_agreement(plan: Plan, output: Path, family: Sequence[Candidate], *,
                  calibration: Calibration, group: _Group,
                  tokenizer: ReplayTokenizer) -> list[Predicted]:
    """A draft model's candidates, each from the calibration runs of it at other k."""
    runs = {c.k: folder for c in family if c.setting in plan.first
            and (folder := _measured(plan, output, c)) is not None}
    out = []
    for candidate in family:
        sources = [folder for k, folder in sorted(runs.items()) if k != candidate.k]
        if not sources:
            reason = ("a draft model is predicted from measured runs of it at other k, and "
                      "none finished")
            out.append(_by_counts(plan, output, candidate, calibration=calibration,
                                  group=group, reason=reason))
            continue
        try:
            (low,) = replay_agreement(group.folder, [candidate.strategy], sources,
                                      tokenizer=tokenizer)
            (high,) = replay_agreement(group.folder, [candidate.strategy], sources,
                                       optimistic=True, tokenizer=tokenizer)
        except ReplayError as exc:
            out.append(_skipped(candidate, str(exc), group))
            continue
        names = ", ".join(f.name for f in sources)
        note = f"agreement measured at k={[k for k in sorted(runs) if k != candidate.k]} ({names})"
        out.append(_from_run(candidate, low, "agreement", calibration=calibration,
                             group=group, note=note, upper=high))
    return out


def _by_draft_replay(family: Sequence[Candidate], *, calibration: Calibration, group: _Group,
                     tokenizer: ReplayTokenizer, engines: EngineFactory) -> list[Predicted]:
    """A draft model's candidates, replayed from its greedy continuations (one engine).

    Raises:
        ReplayError, EngineError: the draft model could not be run or replayed here.
    """
    known = read_known_run(group.folder, tokenizer=tokenizer)
    runs, continuations = replay_draft_run(known, [c.strategy for c in family],
                                           engine_factory=engines)
    note = (f"replayed from the draft model's greedy continuations of every baseline prefix "
            f"({continuations.requests} of {continuations.max_k} tokens, one engine)")
    return [_from_run(c, run, "draft replay", calibration=calibration, group=group, note=note)
            for c, run in zip(family, runs, strict=True)]


def _draft_model(plan: Plan, output: Path, family: Sequence[Candidate], *,
                 calibration: Calibration, group: _Group, tokenizer: ReplayTokenizer,
                 engines: EngineFactory | None) -> list[Predicted]:
    """A draft model's candidates: draft replay where it runs, else measured agreement."""
    why = "draft replay is off"
    method = _speculative_config(family[0].strategy, plan.tune.model).get("method")
    if engines is not None and method in DRAFT_METHODS:
        try:
            return _by_draft_replay(family, calibration=calibration, group=group,
                                    tokenizer=tokenizer, engines=engines)
        except (ReplayError, EngineError) as exc:
            why = f"draft replay could not run ({exc})"
            log.warning("draft replay could not run: predicting from measured agreement",
                        family=family[0].family, error=str(exc))
    return [attrs.evolve(p, note=f"{p.note}; {why}") if p.source == "agreement" else p
            for p in _by_agreement(plan, output, family, calibration=calibration,
                                   group=group, tokenizer=tokenizer)]


def _group(plan: Plan, output: Path, group: int | None, calibration: Calibration) -> _Group:
    folder = plan.folder(output, plan.baselines[group])
    measured = read_measured_run(folder)
    require_same_settings(calibration, measured.config)
    answered = tuple(r for r in measured.records if r.error is None)
    return _Group(folder, answered, batch_size(measured.config, len(answered)),
                  tuple(sorted({r.category for r in answered})))


def predict_candidates(plan: Plan, output: Path, calibration: Calibration,
                       tokenizer: ReplayTokenizer | None = None, *,
                       draft_engines: EngineFactory | None = engine_for) -> list[Predicted]:
    """Phase d: every candidate's prediction (see :data:`Source`), from the folder's runs.

    ``draft_engines`` builds the draft model's engine for draft replay (default: the
    baseline's backend); None predicts draft models from measured agreement only.
    """
    out: list[Predicted] = []
    for group in plan.groups:
        base = _group(plan, output, group, calibration)
        encoder = tokenizer or load_tokenizer(run_folder.read_config(base.folder))
        families: dict[str, list[Candidate]] = {}
        for candidate in plan.candidates:
            if candidate.max_num_seqs == group:
                families.setdefault(candidate.family, []).append(candidate)
        for family in families.values():
            try:
                runs = replay_run(base.folder, [c.strategy for c in family], tokenizer=encoder)
            except ReplayError as exc:
                spec = _speculative_config(family[0].strategy, plan.tune.model)
                if spec.get("method") in AGREEMENT_METHODS:
                    out += _draft_model(plan, output, family, calibration=calibration,
                                        group=base, tokenizer=encoder, engines=draft_engines)
                else:
                    out += [_by_counts(plan, output, c, calibration=calibration, group=base,
                                       reason=str(exc)) for c in family]
                continue
            out += [_from_run(c, run, "replay", calibration=calibration, group=base)
                    for c, run in zip(family, runs, strict=True)]
    return out


# -- the phases -----------------------------------------------------------------------------


RunItems = Callable[[Sequence[BatchItem], Path], BatchIndex]
"""Runs batch items into a folder as :func:`specdec.study.run_batch` does (the CLI's shows
progress)."""
Say = Callable[[str], None]


def _recorded(output: Path) -> set[str]:
    if not (output / INDEX_FILE).is_file():
        return set()
    try:
        return {item.name for item in read_index(output).items}
    except SpecdecError:
        return set()


def _ensure(items: Sequence[BatchItem], output: Path, run_items: RunItems, say: Say,
            what: str) -> None:
    """Run ``items`` as a batch unless each is finished and ``batch.json`` lists them."""
    todo = [i for i in items if not run_folder.is_finished(output / i.name)]
    if not todo and {i.name for i in items} <= _recorded(output):
        say(f"{what}: done ({len(items)} runs)")
        return
    say(f"{what}: {len(todo)} of {len(items)} runs to do")
    run_items(items, output)


def _claim(output: Path, tune: TuneConfig) -> None:
    """Record the tune in the folder; refuse one tuned with other run-defining settings."""
    path = output / TUNE_FILE
    mine = unstructure(tune)
    if path.is_file():
        theirs = loads(path.read_bytes())
        differ = [key for key in RUN_DEFINING
                  if dumps(theirs.get(key)) != dumps(mine.get(key))]
        if differ:
            msg = (f"{output} was tuned with other {', '.join(differ)} (see {path}): its runs "
                   "measured other settings; tune into another --output-base, or delete the "
                   "folder to start again")
            raise SpecdecError(msg)
    output.mkdir(parents=True, exist_ok=True)
    write_json(path, {"schema_version": SCHEMA_VERSION, **mine})


def _require_baselines(plan: Plan, output: Path) -> None:
    index = read_index(output)
    statuses = {item.setting: item for item in index.items}
    for group, setting in plan.baselines.items():
        if not run_folder.is_finished(plan.folder(output, setting)):
            item = statuses.get(setting)
            why = f"{item.status}: {item.error}" if item is not None else "not run"
            where = "" if group is None else f" at max_num_seqs {group}"
            msg = (f"the baseline{where} did not finish ({why}); every prediction replays it: "
                   f"see {plan.folder(output, setting) / 'run.log'}, then run the same command "
                   "again to resume")
            raise SpecdecError(msg)


def _run_ids(folders: Sequence[Path]) -> list[str]:
    return sorted(str(run_folder.read_provenance(f).get("run_id")) for f in folders)


def _calibration(plan: Plan, output: Path, say: Say) -> tuple[Calibration, list[str]]:
    """Phase c: the cost model over the finished runs of phases a-b, reused when it has them."""
    folders = [output / i.name for i in plan.items_of(plan.first)
               if run_folder.is_finished(output / i.name)]
    ids = _run_ids(folders)
    path = output / CALIBRATION_FILE
    if path.is_file():
        stored = read_calibration(path)
        if sorted(str(r.run_id) for f in stored.fits for r in f.runs) == ids:
            say(f"calibration: reused {path}")
            return stored, ids
    say(f"calibration: fitting the cost model on {len(folders)} runs")
    calibration = calibrate_folders(folders)
    write_calibration(path, calibration)
    return calibration, ids


def _ranking(plan: Plan, output: Path, calibration: Calibration, run_ids: Sequence[str], *,
             tokenizer: ReplayTokenizer | None, say: Say,
             draft_engines: EngineFactory | None) -> Ranking:
    """Phases d and e, reused from ``ranking.json`` when nothing they read has changed."""
    tune = unstructure(plan.tune)
    key = {"tune": {k: v for k, v in tune.items()
                    if k not in ("confirm", "name", "near_tie_threshold", "seed")},
           "runs": list(run_ids)}
    path = output / RANKING_FILE
    if path.is_file():
        stored = read_ranking(path)
        if dumps(stored.key) == dumps(key):
            say(f"ranking: reused {path}")
            return stored
    say(f"ranking: predicting {len(plan.candidates)} candidates")
    started = time.perf_counter()
    candidates = predict_candidates(plan, output, calibration, tokenizer,
                                    draft_engines=draft_engines)
    categories = sorted({c for p in candidates for c in p.predictions if c != OVERALL})
    ranking = Ranking(key, tuple(categories), tuple(candidates), time.perf_counter() - started)
    write_json(path, ranking)
    return ranking


def run_tune(tune: TuneConfig, output: Path, *, predict_only: bool = False,
             run_items: RunItems | None = None, tokenizer: ReplayTokenizer | None = None,
             say: Say | None = None,
             draft_engines: EngineFactory | None = engine_for) -> TuneResult:
    """Run every phase of ``tune`` not yet done in ``output``; write and return the result.

    ``predict_only`` stops after the ranking (no confirmation runs; the prediction files
    are written without measured confirmations).  ``run_items`` runs batch items (default
    :func:`specdec.study.run_batch`); ``tokenizer`` replaces the model's own for replay
    (tests); ``say`` gets one line per phase.  ``draft_engines`` builds the engine of a
    draft model for draft replay (default: the baseline's backend, started in this
    process); None, or an engine that cannot start, predicts draft models from their
    calibration runs' agreement instead (each such prediction's note says why).

    Writes ``calibration.json``, ``ranking.json``, the study report in ``report/`` and
    ``prediction.json``; :func:`specdec.tune_files.write_prediction` renders the result as
    ``prediction.md`` and its plot (the command does both).

    Raises:
        ConfigError: the tune's items are invalid (before anything runs).
        SpecdecError: the folder was tuned with other run-defining settings, a baseline did
            not finish, or the runs cannot calibrate the cost model (with what to run).
    """
    plan = plan_tune(tune)
    _claim(output, tune)
    say = say or log.info
    run = run_items or (lambda items, folder: run_batch(
        items, folder, name=tune.name, near_tie_threshold=tune.near_tie_threshold,
        seed=tune.seed))
    first = plan.items_of(plan.first)
    _ensure(first, output, run, say, "baseline and calibration runs")
    _require_baselines(plan, output)
    calibration, run_ids = _calibration(plan, output, say)
    ranking = _ranking(plan, output, calibration, run_ids, tokenizer=tokenizer, say=say,
                       draft_engines=draft_engines)
    if not predict_only:
        chosen = {c.setting for c in choose_confirmations(ranking, plan.groups, tune.confirm)}
        _ensure(plan.items_of(set(plan.first) | chosen), output, run, say, "confirmation runs")
    result = _result(plan, output, calibration, ranking, predict_only=predict_only)
    write_json(output / PREDICTION_FILE, result)
    return result


# -- predicted against measured -----------------------------------------------------------


def _check(predicted: float | None, measured: float | None,
           interval: Interval | None = None) -> Check:
    gap = residual(measured, predicted) if measured is not None and predicted else None
    return Check(predicted, measured, interval, gap)


def _confirmed(plan: Plan, ranking: Ranking, report: Report,
               chosen: set[str]) -> list[Confirmed]:
    index = {(c.setting, c.category): c for c in report.comparisons}
    measured = {s.name for s in report.settings}
    out = []
    for candidate in ranking.candidates:
        if candidate.setting not in measured or (candidate.setting, OVERALL) not in index:
            continue
        roles = tuple(role for role, member in (("calibration", candidate.setting in plan.first),
                                                ("confirmation", candidate.setting in chosen))
                      if member) or ("earlier run",)
        speedups = {}
        for category in (*ranking.categories, OVERALL):
            comparison = index.get((candidate.setting, category))
            if comparison is not None:
                speedups[category] = _check(candidate.speedup(category),
                                            comparison.speedup_spec_bench,
                                            comparison.speedup_spec_bench_interval)
        overall = index[candidate.setting, OVERALL]
        total = candidate.predictions.get(OVERALL)
        out.append(Confirmed(candidate.setting, candidate.family, candidate.k,
                             candidate.max_num_seqs, candidate.source, roles, speedups,
                             _check(total.speedup_total if total else None,
                                    overall.speedup_throughput,
                                    overall.speedup_throughput_interval),
                             candidate.upper_speedup()))
    return out


def _recommendations(ranking: Ranking, report: Report | None,
                     confirmed: set[str]) -> list[Recommendation]:
    out = []
    for category in (*ranking.categories, OVERALL):
        best = max((c for c in ranking.candidates if c.speedup(category) is not None),
                   key=lambda c: (c.speedup(category) or 0.0, -c.k), default=None)
        picked = report.best.get(category) if report is not None else None
        out.append(Recommendation(
            category, picked["setting"] if picked else None,
            picked["speedup"] if picked else None, best.setting if best else None,
            best.speedup(category) if best else None,
            best is not None and best.setting in confirmed))
    return out


def schedule_entries(k_by_size: Sequence[tuple[int, int]]) -> tuple[tuple[int, int, int], ...]:
    """The ``num_speculative_tokens_per_batch_size`` of vLLM for a k at each batch size.

    The swept sizes s1 < s2 < ... become inclusive ranges ``(1, s2 - 1, k1), (s2, s3 - 1,
    k2), ..., (sn, sn, kn)``: vLLM's first range must start at 1 and it carries the last k
    to larger batches; neighbours with the same k are merged.
    """
    pairs = sorted(k_by_size)
    entries: list[list[int]] = []
    for index, (size, k) in enumerate(pairs):
        start = 1 if index == 0 else size
        end = pairs[index + 1][0] - 1 if index + 1 < len(pairs) else size
        if entries and entries[-1][2] == k:
            entries[-1][1] = end
        else:
            entries.append([start, end, k])
    return tuple((a, b, c) for a, b, c in entries)


def _schedules(ranking: Ranking, groups: Sequence[int | None]) -> list[Schedule]:
    sizes = [g for g in groups if g is not None]
    if len(sizes) < 2:  # noqa: PLR2004 - a schedule needs two batch sizes
        return []
    families = dict.fromkeys(c.family for c in ranking.candidates)
    out = []
    for family in families:
        pairs: list[tuple[int, int]] = []
        configs: dict[int, Mapping[str, Any]] = {}
        for size in sizes:
            best = next((c for c in ranked(ranking.candidates, OVERALL, size)
                         if c.family == family), None)
            if best is None:
                break
            fast = (best.speedup() or 0.0) > 1
            pairs.append((size, best.k if fast else 0))
            configs[best.k] = best.speculative_config
        if len(pairs) < len(sizes):
            continue
        top = max(k for _, k in pairs)
        spec: dict[str, Any] = {}
        if top:
            spec = {**configs[top], K: top,
                    "num_speculative_tokens_per_batch_size": [
                        list(e) for e in schedule_entries(pairs)]}
        out.append(Schedule(family, tuple(pairs), schedule_entries(pairs), spec))
    return out


def _fits(calibration: Calibration) -> tuple[FitSummary, ...]:
    return tuple(FitSummary(f.batch_size, f.form, next(
        (form.held_out_error for form in f.forms if form.name == f.form), None))
        for f in calibration.fits)


def _result(plan: Plan, output: Path, calibration: Calibration, ranking: Ranking, *,
            predict_only: bool) -> TuneResult:
    chosen = ({c.setting for c in choose_confirmations(ranking, plan.groups, plan.tune.confirm)}
              if not predict_only else set())
    report = build_report([output])
    from specdec.report_files import write_report  # noqa: PLC0415 - draws; only here

    files = write_report(report, output / REPORT_FOLDER)
    confirmed = _confirmed(plan, ranking, report, chosen)
    index = read_index(output)
    failed = tuple(f"{i.name}: {i.status}" + (f" ({i.error})" if i.error else "")
                   for i in index.items if i.status != "done")
    return TuneResult(
        name=plan.tune.name, folder=str(output), predict_only=predict_only,
        fits=_fits(calibration), ranking=ranking, confirmed=tuple(confirmed),
        recommendations=tuple(_recommendations(ranking, report, {c.setting for c in confirmed})),
        schedules=tuple(_schedules(ranking, plan.groups)), failed=failed,
        warnings=tuple(report.warnings), files=tuple(str(f) for f in files))


__all__ = [
    "CALIBRATION_FILE",
    "PREDICTION_FILE",
    "RANKING_FILE",
    "Candidate",
    "Check",
    "Confirmed",
    "Plan",
    "Predicted",
    "Ranking",
    "Recommendation",
    "Schedule",
    "TuneConfig",
    "TuneResult",
    "check_tune",
    "choose_confirmations",
    "describe_plan",
    "load_tune",
    "plan_tune",
    "predict_candidates",
    "prediction_kind",
    "ranked",
    "read_prediction",
    "read_ranking",
    "run_tune",
    "schedule_entries",
    "tune_from_mapping",
]
