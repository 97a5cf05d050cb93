"""A cost model of decode steps, calibrated on the machine at hand.

A calibration reads a few finished runs (a baseline and speculative runs at a
few ``num_speculative_tokens``, on the engine and settings a study uses),
counts each turn's decode steps (:func:`specdec.metrics.decode_steps`) and fits
the time of a step as a function of the draft tokens it checks and the drafter
that proposed them, by weighted least squares over turns.  Several candidate
forms (:data:`FORMS`) are fitted and tested on held-out runs (each run
predicted from a fit without it); the simplest one whose error is near the
smallest is chosen and recorded, with every form's error.  A candidate's
replayed counts then give its predicted decode time, and :mod:`specdec.metrics`
its token rates and speedup, as for a measured run.  The formulas are in
``docs/prediction.md``.

Batch sizes are calibrated separately (one :class:`BatchFit` each) and never
interpolated.  Nothing here runs an engine.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt
from attrs import field, frozen

from specdec import run_folder
from specdec.errors import CalibrationError, SpecdecError
from specdec.metrics import (
    decode_steps,
    decode_tokens_per_step,
    group_metrics,
    speedup,
    turn_decode_steps,
)
from specdec.records import (
    SCHEMA_VERSION,
    EngineConfig,
    ExperimentConfig,
    RequestRecord,
    SpecStats,
    StrategyConfig,
    TurnRecord,
)
from specdec.serialization import loads, problems, structure, write_json

__all__ = [
    "BATCH_SIZE_SETTINGS",
    "FORMS",
    "PARSIMONY",
    "BatchFit",
    "Calibration",
    "Form",
    "FormFit",
    "MeasuredRun",
    "Prediction",
    "RunFit",
    "batch_size",
    "calibrate",
    "calibrate_folders",
    "drafter_key",
    "predict",
    "predicted_records",
    "read_calibration",
    "read_measured_run",
    "require_same_settings",
    "residual",
    "speculative_tokens",
    "step_time",
    "write_calibration",
]

Floats = npt.NDArray[np.float64]

BASELINE = "none"
"""The strategy name of a run without speculation."""

STEP = "step"
VERIFY = "verify"
VERIFY_SQUARED = "verify_squared"

PARSIMONY = 1.1
"""The simplest form whose held-out error is at most the smallest one's times
this is chosen: more coefficients must earn their keep, as with the noise of a
few runs a form that nests a simpler one can edge it out by chance."""

_IDENTIFIED = 1e-9
"""Smallest singular value, relative to the largest, of the fit's column-scaled
design matrix for its coefficients to count as told apart (below it, two or
more columns are the same up to rounding)."""

_CONFOUNDED = 0.1
"""A column's weight in the design's null direction above which it is named
among the coefficients the runs cannot tell apart."""


@frozen
class Form:
    """One candidate form of the step time (see ``docs/prediction.md``).

    Every form has the target's time per step ``t0``; the flags add a fixed
    per-step cost of each drafter (``o[s]``), a cost per draft token checked
    (``c``), its square (``c2``) and the drafter's cost per proposed token of
    ``k`` (``d[s]``).
    """

    name: str
    formula: str
    overhead: bool = False
    verify: bool = False
    verify_squared: bool = False
    drafter: bool = False


FORMS: tuple[Form, ...] = (
    Form("fixed", "t0 + o[s]", overhead=True),
    Form("linear", "t0 + c*q + d[s]*k", verify=True, drafter=True),
    Form("linear_overhead", "t0 + o[s] + c*q + d[s]*k", overhead=True, verify=True,
         drafter=True),
    Form("quadratic", "t0 + o[s] + c*q + c2*q^2 + d[s]*k", overhead=True, verify=True,
         verify_squared=True, drafter=True),
)
"""The candidate forms, simplest first (see :data:`PARSIMONY`)."""


# -- what a run is, to the cost model ------------------------------------------


def drafter_key(strategy: StrategyConfig) -> str:
    """The name a strategy's drafter cost is kept under: its name, with its ``model``.

    Two draft models cost differently, so ``draft_model`` and the EAGLE
    strategies are keyed by their ``model`` option too
    (``draft_model(model=smollm2-135m-draft)``); the other options (an n-gram
    window, say) are taken not to change the drafter's cost.
    """
    model = strategy.options.get("model")
    return f"{strategy.name}(model={model})" if model is not None else strategy.name


def speculative_tokens(strategy: StrategyConfig) -> int:
    """The strategy's ``num_speculative_tokens`` k (0 without speculation).

    Raises:
        CalibrationError: a speculative strategy whose options do not give k.
    """
    if strategy.name == BASELINE:
        return 0
    k = strategy.options.get("num_speculative_tokens")
    if isinstance(k, int) and not isinstance(k, bool) and k >= 1:
        return k
    msg = (f"strategy {strategy.name!r} has no num_speculative_tokens in its options "
           f"({k!r}): the cost model needs k; set strategy.num_speculative_tokens")
    raise CalibrationError(msg)


def batch_size(config: ExperimentConfig, requests: int) -> int:
    """The number of requests a run keeps in flight, the batch size it is calibrated at.

    Sequential mode: 1.  Batch mode: every request at once, at most
    ``engine.max_num_seqs``; the server backend: its ``concurrency`` (1 in
    sequential mode, every request in batch mode when unset).  A label, not a
    measurement: the requests running at once fall as a batch drains, and vLLM's
    own default cap and the KV cache can hold fewer; a prediction holds for
    runs with the same label, benchmark and settings.

    Raises:
        CalibrationError: requests arrive at a rate (``engine.request_rate``), so
            how many are in flight is not set by the run.
    """
    engine = config.engine
    if engine.backend == "server" and engine.request_rate is not None:
        msg = (f"a run with engine.request_rate ({engine.request_rate}/s) has no fixed "
               "number of requests in flight: calibrate and predict without a rate")
        raise CalibrationError(msg)
    if engine.backend == "server" and engine.concurrency is not None:
        size = engine.concurrency
    elif config.mode == "sequential":
        size = 1
    else:
        size = requests if engine.max_num_seqs is None else engine.max_num_seqs
    return max(1, min(size, requests))


@frozen
class MeasuredRun:
    """A finished run as the cost model reads it: where it is, its settings, its records."""

    folder: str
    run_id: str | None
    config: ExperimentConfig
    records: tuple[RequestRecord, ...]
    provenance: Mapping[str, Any] = field(factory=dict)


def read_measured_run(folder: Path) -> MeasuredRun:
    """The finished run in ``folder``, through :mod:`specdec.run_folder`.

    Raises:
        SpecdecError: the folder holds no finished run (``metrics.json``).
    """
    run_folder.check_folder(folder)
    if not run_folder.is_finished(folder):
        msg = (f"{folder} holds no finished run (no metrics.json): finish it "
               f"(`specdec-run --resume --output-dir {folder}`) or calibrate without it")
        raise SpecdecError(msg)
    stored = run_folder.read_run(folder)
    run_id = stored.provenance.get("run_id")
    return MeasuredRun(str(folder), str(run_id) if run_id is not None else None, stored.config,
                       tuple(stored.records()), stored.provenance)


@frozen(eq=False)
class _Run:
    """One calibration run's decode steps, turn by turn (turns with a decode step only)."""

    run: MeasuredRun
    key: str
    k: int
    steps: Floats
    drafts: Floats
    draft_tokens: Floats
    decode_s: Floats
    ttft: Mapping[tuple[str, int], float]
    """Every successful turn's TTFT, by request id and turn index (for the TTFT ratio)."""

    @property
    def label(self) -> str:
        """How messages name the run."""
        return f"{self.run.folder} ({self.key}, k={self.k})"


def _turn_counts(run: MeasuredRun, key: str, record: RequestRecord,
                 turn: TurnRecord) -> SpecStats | None:
    if key == BASELINE or turn.spec is not None:
        return turn.spec
    msg = (f"{run.folder}: request {record.id!r} of this {key} run has no speculative counts "
           "(its turn's spec is empty), so its decode steps are unknown; calibrate on runs of "
           "the offline engine, which records them per request")
    raise CalibrationError(msg)


def _read(run: MeasuredRun) -> _Run:
    key = drafter_key(run.config.strategy)
    k = speculative_tokens(run.config.strategy)
    rows: list[tuple[int, int, int, float]] = []
    ttft: dict[tuple[str, int], float] = {}
    for record in run.records:
        if record.error is not None:
            continue
        for index, turn in enumerate(record.turns):
            ttft[record.id, index] = turn.ttft_s
            steps = turn_decode_steps(turn)
            if not steps:
                continue
            spec = _turn_counts(run, key, record, turn)
            rows.append((steps, spec.num_drafts if spec else 0,
                         spec.num_draft_tokens if spec else 0, turn.decode_s))
    if not rows:
        msg = (f"{run.folder} has no decode step: every turn produced at most one token "
               "(the prefill's), so it holds no step time; raise generation.max_tokens, or "
               "calibrate without it")
        raise CalibrationError(msg)
    columns = np.array(rows, dtype=float).T
    return _Run(run, key, k, columns[0], columns[1], columns[2], columns[3], ttft)


# -- the fit ---------------------------------------------------------------------


def _columns(form: Form, keys: Sequence[str]) -> list[str]:
    names = [STEP]
    if form.overhead:
        names += [f"overhead[{key}]" for key in keys]
    if form.verify:
        names.append(VERIFY)
    if form.verify_squared:
        names.append(VERIFY_SQUARED)
    if form.drafter:
        names += [f"drafter[{key}]" for key in keys]
    return names


def _features(names: Sequence[str], *, key: str, k: int, steps: Floats, drafts: Floats,
              draft_tokens: Floats) -> Floats:
    """Each turn's totals over its decode steps, one column per coefficient name."""
    squared = np.divide(draft_tokens**2, drafts, out=np.zeros_like(draft_tokens),
                        where=drafts > 0)
    by_name = {STEP: steps, VERIFY: draft_tokens, VERIFY_SQUARED: squared,
               f"overhead[{key}]": steps, f"drafter[{key}]": steps * k}
    zero = np.zeros_like(steps)
    return np.column_stack([by_name.get(name, zero) for name in names])


def _run_features(names: Sequence[str], run: _Run) -> Floats:
    return _features(names, key=run.key, k=run.k, steps=run.steps, drafts=run.drafts,
                     draft_tokens=run.draft_tokens)


def _keys(runs: Sequence[_Run]) -> list[str]:
    return sorted({r.key for r in runs if r.key != BASELINE})


def _unidentified(design: Floats, names: Sequence[str]) -> str | None:
    """Why the runs cannot fix every coefficient, or None when they can."""
    norms = np.linalg.norm(design, axis=0)
    never = [name for name, norm in zip(names, norms, strict=True) if norm == 0]
    if never:
        return f"nothing in these runs measures {', '.join(never)}"
    if design.shape[0] < design.shape[1]:
        return f"{design.shape[0]} turns cannot fix {design.shape[1]} coefficients"
    _, singular, vt = np.linalg.svd(design / norms, full_matrices=False)
    if singular[-1] >= _IDENTIFIED * singular[0]:
        return None
    confounded = [name for name, weight in zip(names, vt[-1], strict=True)
                  if abs(weight) > _CONFOUNDED]
    return f"these runs cannot tell apart {' and '.join(confounded)}"


def _fit(form: Form, runs: Sequence[_Run]) -> dict[str, float] | str:
    """Coefficients of ``form`` over ``runs``' turns, or why they cannot be fitted.

    Weighted least squares of each turn's decode time on its totals, weighted
    by 1 / steps: the steps' times are taken as independent with one variance,
    so a turn's time has a variance proportional to its steps.
    """
    names = _columns(form, _keys(runs))
    design = np.vstack([_run_features(names, r) for r in runs])
    times = np.concatenate([r.decode_s for r in runs])
    scale = 1 / np.sqrt(np.concatenate([r.steps for r in runs]))
    weighted = design * scale[:, None]
    problem = _unidentified(weighted, names)
    if problem is not None:
        return problem
    solution = np.linalg.lstsq(weighted, times * scale, rcond=None)[0]
    return {name: float(value) for name, value in zip(names, solution, strict=True)}


def _covers(coefficients: Mapping[str, float], key: str) -> bool:
    """Whether ``coefficients`` hold the drafter ``key``'s (every form has some)."""
    return key == BASELINE or f"overhead[{key}]" in coefficients or \
        f"drafter[{key}]" in coefficients


def _predict_run(coefficients: Mapping[str, float], run: _Run) -> float:
    """The run's total decode time under ``coefficients`` (which must cover its drafter)."""
    names = list(coefficients)
    weights = np.array([coefficients[n] for n in names])
    return float((_run_features(names, run) @ weights).sum())


def residual(measured: float, predicted: float) -> float:
    """How far a measurement is from its prediction: measured / predicted - 1.

    Positive when the measurement is larger (a time longer, a rate higher than
    predicted).

    Raises:
        ValueError: if ``predicted`` is not above zero.
    """
    if predicted <= 0:
        msg = f"cannot compare {measured} with a prediction of {predicted}: it must be above 0"
        raise ValueError(msg)
    return measured / predicted - 1


@frozen
class RunFit:
    """One calibration run, and how well the chosen form predicts its decode time.

    ``residual`` compares the run with the fit over every run;
    ``held_out_residual`` with the fit over the other runs (the test the form
    was chosen by).  Residuals are :func:`residual` of the run's total decode
    time over its turns with a decode step.
    """

    folder: str
    run_id: str | None
    strategy: str
    k: int
    turns: int
    steps: int
    decode_s: float
    ttft_s: float
    fitted_decode_s: float
    residual: float
    held_out_decode_s: float
    held_out_residual: float


@frozen
class FormFit:
    """One candidate form's fit over every run and its held-out error.

    ``held_out_error`` is the root mean square of the runs' held-out residuals;
    None, with ``note`` saying why, when some run could not be held out (the
    others cannot fix a coefficient it needs), and then the form is not chosen.
    ``coefficients`` is empty when the form cannot be fitted even on every run.
    """

    name: str
    formula: str
    coefficients: Mapping[str, float]
    held_out_error: float | None
    note: str | None = None


@frozen
class BatchFit:
    """The cost model at one batch size: the chosen form, its coefficients, its runs.

    Coefficients are seconds: ``step`` per decode step, ``verify`` per draft
    token checked, ``verify_squared`` per squared draft tokens checked in a
    step, ``overhead[s]`` per step and ``drafter[s]`` per step and per token of
    k, for drafter ``s`` (:func:`drafter_key`).  ``ttft_ratio[s]`` is the
    drafter's TTFT over the baseline's on the same turns; ``calibrated_k[s]``
    the k its runs used.
    """

    batch_size: int
    form: str
    coefficients: Mapping[str, float]
    ttft_ratio: Mapping[str, float]
    calibrated_k: Mapping[str, tuple[int, ...]]
    runs: tuple[RunFit, ...]
    forms: tuple[FormFit, ...]


@frozen
class Calibration:
    """A calibrated cost model: a fit per batch size, on one model and engine settings.

    Stored with a study as JSON (:func:`write_calibration`,
    :func:`read_calibration`); ``engine`` is the first run's settings (the runs
    share them but for :data:`BATCH_SIZE_SETTINGS`); ``vllm``, ``device``, ``host``
    and ``cpu_count`` come from the first run's provenance.
    """

    model: str
    engine: EngineConfig
    fits: tuple[BatchFit, ...]
    vllm: str | None = None
    device: str | None = None
    host: str | None = None
    cpu_count: int | None = None
    schema_version: int = field(default=SCHEMA_VERSION, kw_only=True)

    def fit_for(self, size: int) -> BatchFit:
        """The fit at batch size ``size``.

        Raises:
            CalibrationError: the calibration has no runs at that batch size.
        """
        for fit in self.fits:
            if fit.batch_size == size:
                return fit
        have = ", ".join(str(f.batch_size) for f in self.fits)
        msg = (f"the calibration has no runs at batch size {size} (it has {have}); batch "
               "sizes are not interpolated: calibrate at that batch size")
        raise CalibrationError(msg)


def _ttft_ratios(runs: Sequence[_Run]) -> dict[str, float]:
    """Each drafter's TTFT over the baseline's, summed over the turns both have.

    The baseline's TTFT of a turn is its mean over the baseline runs.
    """
    baseline: dict[tuple[str, int], list[float]] = {}
    for run in runs:
        if run.key == BASELINE:
            for turn, ttft in run.ttft.items():
                baseline.setdefault(turn, []).append(ttft)
    reference = {turn: statistics.fmean(values) for turn, values in baseline.items()}
    ratios = {BASELINE: 1.0}
    for key in _keys(runs):
        spec_total = base_total = 0.0
        for run in (r for r in runs if r.key == key):
            for turn, ttft in run.ttft.items():
                if turn in reference:
                    spec_total += ttft
                    base_total += reference[turn]
        if base_total <= 0:
            labels = ", ".join(r.label for r in runs if r.key == key)
            msg = (f"{labels} share no timed turn with the baseline runs (matched by request "
                   "id): calibrate every run on the same benchmark")
            raise CalibrationError(msg)
        ratios[key] = spec_total / base_total
    return ratios


def _held_out(form: Form, runs: Sequence[_Run]) -> list[float] | str:
    """Each run's decode time predicted by ``form`` fitted on the other runs, or why not."""
    predicted = []
    for index, run in enumerate(runs):
        others = [r for i, r in enumerate(runs) if i != index]
        fitted = _fit(form, others)
        if isinstance(fitted, str):
            return f"without {run.label}: {fitted}"
        if not _covers(fitted, run.key):
            return f"without {run.label}: no other run of {run.key}"
        value = _predict_run(fitted, run)
        if value <= 0:
            return f"without {run.label}: it predicts {value:.3g} s of decode time"
        predicted.append(value)
    return predicted


def _rms(values: Sequence[float]) -> float:
    return math.sqrt(statistics.fmean(v * v for v in values))


_WHAT_TO_DO = (
    "calibrate on two baseline runs and runs of each speculative strategy at two or more "
    "num_speculative_tokens (three or more for the forms with a per-step overhead), all on "
    "the same benchmark and settings; benchmarks/calibration.py runs such a set"
)


def _fit_batch(size: int, runs: Sequence[_Run]) -> BatchFit:
    where = f"at batch size {size}"
    if not any(r.key == BASELINE for r in runs):
        msg = (f"no baseline run (strategy none) {where}: the step time without speculation "
               f"anchors the cost model and the speedups; {_WHAT_TO_DO}")
        raise CalibrationError(msg)
    if len(runs) == 1:
        msg = (f"one run only {where} ({runs[0].label}): one run cannot show how the step "
               f"time changes with k; {_WHAT_TO_DO}")
        raise CalibrationError(msg)
    if not _keys(runs):
        msg = (f"no speculative run {where}: the cost model predicts the strategies it was "
               f"calibrated on; {_WHAT_TO_DO}")
        raise CalibrationError(msg)
    forms: list[FormFit] = []
    held_out: dict[str, list[float]] = {}
    for form in FORMS:
        fitted = _fit(form, runs)
        if isinstance(fitted, str):
            forms.append(FormFit(form.name, form.formula, {}, None, note=fitted))
            continue
        held = _held_out(form, runs)
        if isinstance(held, str):
            forms.append(FormFit(form.name, form.formula, fitted, None, note=held))
            continue
        if any(_predict_run(fitted, r) <= 0 for r in runs):
            forms.append(FormFit(form.name, form.formula, fitted, None,
                                 note="its fit over every run predicts a time <= 0 for a run"))
            continue
        held_out[form.name] = held
        error = _rms([residual(float(r.decode_s.sum()), p)
                      for r, p in zip(runs, held, strict=True)])
        forms.append(FormFit(form.name, form.formula, fitted, error))
    usable = [f for f in forms if f.held_out_error is not None]
    if not usable:
        reasons = "\n".join(f"  {f.name}: {f.note}" for f in forms)
        msg = (f"no candidate form of the step time can be tested on held-out runs {where}:\n"
               f"{reasons}\n{_WHAT_TO_DO}")
        raise CalibrationError(msg)
    best = min(f.held_out_error or 0.0 for f in usable)
    # FORMS lists the simpler forms first: the first within the margin of the best.
    chosen = next(f for f in usable if (f.held_out_error or 0.0) <= best * PARSIMONY)
    return BatchFit(
        batch_size=size,
        form=chosen.name,
        coefficients=chosen.coefficients,
        ttft_ratio=_ttft_ratios(runs),
        calibrated_k={key: tuple(sorted({r.k for r in runs if r.key == key}))
                      for key in _keys(runs)},
        runs=tuple(_run_fit(r, chosen.coefficients, p)
                   for r, p in zip(runs, held_out[chosen.name], strict=True)),
        forms=tuple(forms),
    )


def _run_fit(run: _Run, coefficients: Mapping[str, float], held_out: float) -> RunFit:
    measured = float(run.decode_s.sum())
    fitted = _predict_run(coefficients, run)
    return RunFit(
        folder=run.run.folder, run_id=run.run.run_id, strategy=run.key, k=run.k,
        turns=len(run.steps), steps=int(run.steps.sum()), decode_s=measured,
        ttft_s=float(sum(run.ttft.values())), fitted_decode_s=fitted,
        residual=residual(measured, fitted), held_out_decode_s=held_out,
        held_out_residual=residual(measured, held_out),
    )


BATCH_SIZE_SETTINGS = ("max_num_seqs", "concurrency")
"""Engine settings that set a run's batch size (:func:`batch_size`): runs may differ in them,
as each batch size is fitted on its own runs; every other engine setting must be shared."""


def _differences(name: str, first: ExperimentConfig, other: ExperimentConfig) -> list[str]:
    found = [] if first.model == other.model else [f"model ({first.model!r} / {other.model!r})"]
    for attribute in attrs.fields(EngineConfig):
        a, b = getattr(first.engine, attribute.name), getattr(other.engine, attribute.name)
        if a != b and attribute.name not in BATCH_SIZE_SETTINGS:
            found.append(f"engine.{attribute.name} ({a!r} / {b!r})")
    return [f"{name}: {item}" for item in found]


def require_same_settings(calibration: Calibration, config: ExperimentConfig) -> None:
    """Refuse a config whose model or engine settings differ from the calibration's.

    The settings that set the batch size (:data:`BATCH_SIZE_SETTINGS`) may differ: a
    prediction at a batch size the calibration lacks is refused by :meth:`Calibration.fit_for`.

    Raises:
        CalibrationError: naming each setting that differs.
    """
    reference = ExperimentConfig(model=calibration.model, engine=calibration.engine)
    found = _differences("calibration / experiment", reference, config)
    if found:
        lines = "\n".join(f"  {line}" for line in found)
        msg = (f"the calibration was measured with other settings:\n{lines}\n"
               "calibrate with the study's model and engine settings")
        raise CalibrationError(msg)


def calibrate(runs: Sequence[MeasuredRun]) -> Calibration:
    """Fit the cost model on finished runs, at each batch size they were run at.

    Every run must share the model and engine settings, but for those that set the batch
    size (:data:`BATCH_SIZE_SETTINGS`, a sweep of ``engine.max_num_seqs``).  At each batch size
    (:func:`batch_size`), every :data:`FORMS` candidate is fitted over the turns
    of every run and tested by predicting each run from a fit over the others;
    the simplest form whose root-mean-square held-out residual is within
    :data:`PARSIMONY` of the smallest is chosen.

    Raises:
        CalibrationError: no runs; runs with different settings; at a batch size,
            no baseline, a single run, no speculative run, or no form that can
            be tested on held-out runs; a run without decode steps, or whose
            speculative turns have no counts.
    """
    if not runs:
        raise CalibrationError(f"no runs to calibrate on: {_WHAT_TO_DO}")
    first = runs[0]
    found = [line for run in runs[1:]
             for line in _differences(f"{first.folder} / {run.folder}", first.config, run.config)]
    if found:
        lines = "\n".join(f"  {line}" for line in found)
        msg = (f"calibration runs must share the model and engine settings; these differ:\n"
               f"{lines}\nrun them again with one set of settings")
        raise CalibrationError(msg)
    by_size: dict[int, list[_Run]] = {}
    for run in runs:
        size = batch_size(run.config, sum(1 for r in run.records if r.error is None))
        by_size.setdefault(size, []).append(_read(run))
    provenance = first.provenance
    cpu_count = provenance.get("cpu_count")
    return Calibration(
        model=first.config.model,
        engine=first.config.engine,
        fits=tuple(_fit_batch(size, by_size[size]) for size in sorted(by_size)),
        vllm=_text(provenance.get("vllm")),
        device=_text(provenance.get("device")),
        host=_text(provenance.get("host")),
        cpu_count=cpu_count if isinstance(cpu_count, int) else None,
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def calibrate_folders(folders: Sequence[Path]) -> Calibration:
    """:func:`calibrate` on the finished runs in ``folders`` (:func:`read_measured_run`)."""
    return calibrate([read_measured_run(folder) for folder in folders])


def write_calibration(path: Path, calibration: Calibration) -> None:
    """Write ``calibration`` as indented JSON, atomically."""
    write_json(path, calibration)


def read_calibration(path: Path) -> Calibration:
    """A calibration written by :func:`write_calibration`, read strictly.

    Raises:
        CalibrationError: the file is missing, not JSON, of another schema
            version, or not a calibration (one ``message @ $.path`` line each).
    """
    try:
        data = loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise CalibrationError(f"{path} does not exist: give a calibration file") from exc
    except ValueError as exc:
        raise CalibrationError(f"{path} is not valid JSON: {exc}") from exc
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        msg = (f"{path} has schema_version {version!r}, this specdec reads {SCHEMA_VERSION}: "
               "calibrate again")
        raise CalibrationError(msg)
    try:
        return structure(data, Calibration)
    except Exception as exc:
        lines = "\n".join(f"  {p}" for p in problems(exc))
        raise CalibrationError(f"invalid calibration in {path}:\n{lines}") from exc


# -- prediction --------------------------------------------------------------------


def _coefficients_for(fit: BatchFit, key: str) -> Mapping[str, float]:
    """The fit's coefficients, checked to cover ``key``'s drafter."""
    if key != BASELINE and key not in fit.ttft_ratio:
        have = ", ".join(k for k in fit.ttft_ratio if k != BASELINE) or "none"
        msg = (f"the calibration at batch size {fit.batch_size} has no runs of {key} (it has "
               f"{have}): calibrate with runs of it at two or more num_speculative_tokens")
        raise CalibrationError(msg)
    return fit.coefficients


def step_time(fit: BatchFit, strategy: StrategyConfig, draft_tokens: float) -> float:
    """Predicted seconds of one decode step that checks ``draft_tokens`` draft tokens.

    ``draft_tokens`` is q in ``fit.form``'s formula (0 for a step without a
    draft, up to the strategy's k).

    Raises:
        CalibrationError: the fit has no runs of the strategy's drafter.
    """
    key = drafter_key(strategy)
    k = speculative_tokens(strategy)
    coefficients = _coefficients_for(fit, key)
    one = np.ones(1)
    drafts = one if draft_tokens > 0 else np.zeros(1)
    names = list(coefficients)
    row = _features(names, key=key, k=k, steps=one, drafts=drafts,
                    draft_tokens=np.full(1, float(draft_tokens)))
    return float(row[0] @ np.array([coefficients[n] for n in names]))


def _turn_decode_s(coefficients: Mapping[str, float], key: str, k: int, steps: int,
                   spec: SpecStats | None) -> float:
    names = list(coefficients)
    drafts = np.full(1, float(spec.num_drafts if spec else 0))
    tokens = np.full(1, float(spec.num_draft_tokens if spec else 0))
    row = _features(names, key=key, k=k, steps=np.full(1, float(steps)), drafts=drafts,
                    draft_tokens=tokens)
    return float(row[0] @ np.array([coefficients[n] for n in names]))


def _replayed(request: RequestRecord, spec: Mapping[str, Sequence[SpecStats]] | None,
              key: str) -> Sequence[SpecStats | None]:
    if key == BASELINE:
        return [None] * len(request.turns)
    if spec is None:
        msg = f"predicting {key} needs its replayed counts of every baseline request"
        raise CalibrationError(msg)
    turns = spec.get(request.id)
    if turns is None:
        msg = (f"no replayed counts of baseline request {request.id!r} for {key}: replay "
               "every request the baseline answered")
        raise CalibrationError(msg)
    if len(turns) != len(request.turns):
        msg = (f"baseline request {request.id!r} has {len(request.turns)} turns but "
               f"{len(turns)} replayed counts for {key}: give one SpecStats per turn")
        raise CalibrationError(msg)
    return turns


def predicted_records(calibration: Calibration, strategy: StrategyConfig,
                      baseline: Sequence[RequestRecord],
                      spec: Mapping[str, Sequence[SpecStats]] | None = None, *,
                      size: int = 1) -> list[RequestRecord]:
    """The records the candidate is predicted to produce, one per successful baseline request.

    Greedy decoding is lossless, so each turn keeps the baseline's output and
    token count; its ``spec`` is the replayed counts (``spec[request id][turn]``,
    as the engine would count them), its decode time the fit's for its
    :func:`specdec.metrics.decode_steps`, its TTFT the baseline's times the
    drafter's ``ttft_ratio``.  ``size`` is the batch size to predict at.

    Raises:
        CalibrationError: no fit at ``size``, no runs of the strategy's drafter,
            replayed counts missing or of the wrong number of turns, extra
            counts for requests the baseline did not answer, or a predicted
            decode time that is not above zero.
    """
    fit = calibration.fit_for(size)
    key = drafter_key(strategy)
    k = speculative_tokens(strategy)
    coefficients = _coefficients_for(fit, key)
    answered = [r for r in baseline if r.error is None]
    if spec is not None and key != BASELINE:
        extra = sorted(set(spec) - {r.id for r in answered})
        if extra:
            msg = (f"replayed counts for {len(extra)} requests the baseline did not answer "
                   f"({', '.join(map(repr, extra[:3]))}): replay the baseline's own requests")
            raise CalibrationError(msg)
    ratio = fit.ttft_ratio[key]
    predicted = []
    for request in answered:
        turns = []
        for turn, counts in zip(request.turns, _replayed(request, spec, key), strict=True):
            steps = decode_steps(turn.output_tokens, counts)
            decode = _turn_decode_s(coefficients, key, k, steps, counts) if steps else 0.0
            if steps and decode <= 0:
                msg = (f"the calibration ({fit.form}) predicts {decode:.3g} s for request "
                       f"{request.id!r}'s {steps} steps of {key} at k={k}: k is far from the "
                       f"calibrated {fit.calibrated_k.get(key)}; calibrate nearer it")
                raise CalibrationError(msg)
            turns.append(attrs.evolve(turn, spec=counts, decode_s=decode,
                                      ttft_s=turn.ttft_s * ratio))
        predicted.append(attrs.evolve(request, turns=tuple(turns)))
    return predicted


@frozen
class Prediction:
    """A candidate's predicted figures beside its baseline's measured ones.

    Rates and speedups are :mod:`specdec.metrics`' own, over the predicted
    records (:func:`predicted_records`) and the baseline's: ``speedup`` is
    Spec-Bench's (of ``tokens_per_s_mean``), ``speedup_total`` that of
    ``tokens_per_s_total``.  ``tokens_per_step`` and ``step_s`` are the decode
    tokens per step from the replayed counts and the mean predicted step time:
    decode tokens/s = tokens_per_step / step_s.  ``extrapolated`` is set when
    k lies outside the k the drafter was calibrated at.
    """

    strategy: str
    k: int
    batch_size: int
    form: str
    requests: int
    steps: int
    decode_s: float
    tokens_per_step: float | None
    step_s: float | None
    tokens_per_s_mean: float
    tokens_per_s_total: float
    baseline_tokens_per_s_mean: float
    baseline_tokens_per_s_total: float
    speedup: float | None
    speedup_total: float | None
    extrapolated: bool


def predict(calibration: Calibration, strategy: StrategyConfig,
            baseline: Sequence[RequestRecord],
            spec: Mapping[str, Sequence[SpecStats]] | None = None, *,
            size: int = 1) -> Prediction:
    """Predicted token rates and speedups of ``strategy`` against the measured ``baseline``.

    ``baseline`` is a measured baseline run's records at batch size ``size``;
    ``spec`` maps each of its request ids to the candidate's replayed counts,
    one per turn (not needed for strategy ``none``).

    Raises:
        CalibrationError: as :func:`predicted_records`, or the baseline answered
            no request.
    """
    records = predicted_records(calibration, strategy, baseline, spec, size=size)
    if not records:
        raise CalibrationError("the baseline answered no request: nothing to predict from")
    answered = [r for r in baseline if r.error is None]
    fit = calibration.fit_for(size)
    key = drafter_key(strategy)
    k = speculative_tokens(strategy)
    candidate = group_metrics(records)
    measured = group_metrics(answered)
    turns = [t for r in records for t in r.turns]
    steps = sum(turn_decode_steps(t) for t in turns)
    decode = sum(t.decode_s for t in turns)
    calibrated = fit.calibrated_k.get(key, (0,))
    return Prediction(
        strategy=key, k=k, batch_size=size, form=fit.form, requests=len(records), steps=steps,
        decode_s=decode, tokens_per_step=decode_tokens_per_step(turns),
        step_s=decode / steps if steps else None,
        tokens_per_s_mean=candidate.tokens_per_s_mean,
        tokens_per_s_total=candidate.tokens_per_s_total,
        baseline_tokens_per_s_mean=measured.tokens_per_s_mean,
        baseline_tokens_per_s_total=measured.tokens_per_s_total,
        speedup=speedup(candidate.tokens_per_s_mean, measured.tokens_per_s_mean),
        speedup_total=speedup(candidate.tokens_per_s_total, measured.tokens_per_s_total),
        extrapolated=not min(calibrated) <= k <= max(calibrated),
    )
