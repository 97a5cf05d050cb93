"""Confidence intervals of a report's figures: seeded bootstraps, paired by prompt.

A speedup compares a candidate's requests with its baseline's.  The same prompt
(request id) is hard or easy for both, so its two measurements are resampled
together (paired); a prompt that failed in either run is left out of the pair.
Every interval here is a 95% percentile interval from 2,000 resamples drawn
with numpy's seeded generator (seed 0), so a report is the same every time it
is built.

- One run of each setting: :func:`scipy.stats.bootstrap` over prompts,
  ``paired=True``, a vectorized statistic.  Such an interval sees only the noise
  between prompts of one run, so it is marked :data:`WITHIN_RUN`.
- Several repeats of both: a two-level bootstrap (:func:`_two_level`): resample
  the repeat pairs, then the prompts within each drawn pair.  Marked
  :data:`ACROSS_RUNS`.  ``scipy.stats.bootstrap`` resamples one axis of
  observations (paired or not); it has no nested, clustered resampling, and the
  repeats need not hold the same number of prompts, so this level is the small
  resampler below.

Runs of more than :data:`GROUPS` prompts are resampled as that many random
groups of prompts (:func:`_grouped`), which keeps every interval's cost bounded.

Why percentile and not BCa: BCa's acceleration needs a jackknife, one statistic
per left-out prompt, which is quadratic in the number of prompts (a 100,000
request run would take minutes); the two-level resampler has no jackknife of its
own, and one method for both kinds keeps them comparable.  For the smooth ratio
statistics here the percentile interval covers at close to the nominal rate
from a few dozen prompts (``tests/test_intervals.py`` checks it).

Each statistic is a ratio of sums, so its value at the observed data is the
figure :mod:`specdec.metrics` reports (``docs/metrics.md``, "Confidence
intervals"):

- Spec-Bench speedup = mean candidate rate / mean baseline rate, a request's
  rate being :func:`specdec.metrics.request_tokens_per_s`;
- throughput speedup = ratio of output tokens / time, where a request's time is
  its walltime scaled, overall, by the run's wall clock over the summed
  walltimes (so the figure is the run's ``throughput_tokens_per_s``), and per
  category unscaled (the category's ``tokens_per_s_total``);
- acceptance rate = accepted / draft tokens; mean acceptance length = 1 +
  accepted / drafts (token-weighted, as the point figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from attrs import frozen
from scipy import stats

from specdec.metrics import request_spec, request_tokens_per_s

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from specdec.records import RequestRecord
    from specdec.run_folder import RunOutputs

    Array = NDArray[np.float64]

__all__ = [
    "ACROSS_RUNS",
    "CONFIDENCE",
    "CROSSED",
    "NOT_ABOVE_AT_START",
    "NO_CROSSOVER",
    "RESAMPLES",
    "SEED",
    "WITHIN_RUN",
    "Crossover",
    "Interval",
    "RunSample",
    "crossover",
    "paired_speedup",
    "request_ratio",
]

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
METHOD = "percentile"
WITHIN_RUN = "within-run only"
"""One run of each side: prompts resampled, the runs' own drift unseen."""
ACROSS_RUNS = "across runs"
"""Several repeats of each side: repeats resampled, then prompts within them."""

_HELD = 4_000_000
"""Resampled values held in memory at once (a batch of resamples times prompts)."""

Figure = Literal["spec_bench", "throughput"]


@frozen
class Interval:
    """A point estimate with its confidence interval and how it was made."""

    estimate: float
    low: float
    high: float
    kind: str
    """:data:`WITHIN_RUN` or :data:`ACROSS_RUNS`."""
    confidence: float = CONFIDENCE
    resamples: int = RESAMPLES
    seed: int = SEED
    method: str = METHOD

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies inside the interval (ends included)."""
        return self.low <= value <= self.high

    def above(self, value: float) -> bool:
        """Whether the whole interval lies above ``value``."""
        return self.low > value

    def overlaps(self, other: Interval) -> bool:
        """Whether the two intervals share a value."""
        return self.low <= other.high and other.low <= self.high


@frozen(eq=False)
class RunSample:
    """One run's succeeded requests as columns (what the bootstraps resample).

    ``clock_scale`` is the run's wall clock over its summed request walltimes:
    overall throughput divides by the wall clock, which requests served at the
    same time share.
    """

    ids: tuple[str, ...]
    categories: tuple[str, ...]
    rates: Array
    tokens: Array
    seconds: Array
    accepted: Array
    draft_tokens: Array
    drafts: Array
    clock_scale: float = 1.0

    @classmethod
    def of(cls, records: Sequence[RequestRecord], elapsed_s: float) -> RunSample:
        """The columns of ``records``' succeeded requests; ``elapsed_s`` is the run's clock."""
        done = [r for r in records if r.error is None]
        specs = [request_spec(r) for r in done]
        seconds = np.array([r.walltime_s for r in done], dtype=np.float64)
        total = float(seconds.sum())
        return cls(
            ids=tuple(r.id for r in done),
            categories=tuple(r.category for r in done),
            rates=np.array([request_tokens_per_s(r) for r in done], dtype=np.float64),
            tokens=np.array([r.output_tokens for r in done], dtype=np.float64),
            seconds=seconds,
            accepted=np.array([s.num_accepted_tokens if s else 0 for s in specs], np.float64),
            draft_tokens=np.array([s.num_draft_tokens if s else 0 for s in specs], np.float64),
            drafts=np.array([s.num_drafts if s else 0 for s in specs], np.float64),
            clock_scale=elapsed_s / total if total > 0 else 1.0,
        )

    @classmethod
    def of_outputs(cls, outputs: RunOutputs, elapsed_s: float) -> RunSample | None:
        """The same columns from a run folder's figures (no record parsed); None without them."""
        figures = outputs.figures
        if figures is None:
            return None
        done = np.array([r.error is None for r in outputs.requests], dtype=bool)

        def column(view: memoryview) -> Array:
            values: Array = np.asarray(view, dtype=np.float64)[done]
            return values

        seconds = column(figures.seconds)
        total = float(seconds.sum())
        kept = [r for r in outputs.requests if r.error is None]
        return cls(
            ids=tuple(r.id for r in kept),
            categories=tuple(category for (category, _), r in zip(
                outputs.accept_totals, outputs.requests, strict=True) if r.error is None),
            rates=column(figures.rate), tokens=column(figures.tokens), seconds=seconds,
            accepted=column(figures.accepted), draft_tokens=column(figures.draft_tokens),
            drafts=column(figures.drafts),
            clock_scale=elapsed_s / total if total > 0 else 1.0,
        )

    def category(self, name: str | None) -> RunSample:
        """The requests of one category (their time unscaled), or all of them for None."""
        if name is None:
            return self
        keep = np.array([c == name for c in self.categories], dtype=bool)
        return RunSample(
            tuple(i for i, k in zip(self.ids, keep, strict=True) if k),
            tuple(c for c in self.categories if c == name),
            self.rates[keep], self.tokens[keep], self.seconds[keep], self.accepted[keep],
            self.draft_tokens[keep], self.drafts[keep],
        )

    def parts(self, figure: Figure) -> tuple[Array, Array]:
        """Numerator and denominator per request whose sums' ratio is ``figure``."""
        if figure == "spec_bench":
            return self.rates, np.ones_like(self.rates)
        return self.tokens, self.seconds * self.clock_scale


def _ratio_of_ratios(cn: Array, cd: Array, bn: Array, bd: Array, axis: int = -1) -> Array:
    """(sum cn / sum cd) / (sum bn / sum bd), along ``axis`` (scipy's vectorized form)."""
    result: Array = (cn.sum(axis=axis) / cd.sum(axis=axis)) / (
        bn.sum(axis=axis) / bd.sum(axis=axis))
    return result


def _paired(candidate: RunSample, baseline: RunSample, figure: Figure) -> tuple[Array, ...]:
    """Both sides' parts on the prompts both finished, in the same order."""
    position = {rid: i for i, rid in enumerate(baseline.ids)}
    pairs = [(i, position[rid]) for i, rid in enumerate(candidate.ids) if rid in position]
    ci = np.array([c for c, _ in pairs], dtype=np.intp)
    bi = np.array([b for _, b in pairs], dtype=np.intp)
    cn, cd = candidate.parts(figure)
    bn, bd = baseline.parts(figure)
    return cn[ci], cd[ci], bn[bi], bd[bi]


GROUPS = 2000
"""Above this many prompts, prompts are dealt into this many groups before resampling."""


def _grouped(columns: tuple[Array, ...], seed: int) -> tuple[Array, ...]:
    """Columns of more than :data:`GROUPS` prompts summed over random groups of prompts.

    Every statistic here is a ratio of sums, and summing prompts into groups
    dealt at random (seeded; the same groups for every column, so pairs stay
    together) keeps the mean, variance and skewness of the resampled sums: a
    group's sum is a sum of independent prompts, and the sums of ``GROUPS``
    resampled groups have the cumulants of the sums of ``n`` resampled prompts.
    It bounds an interval's work at ``RESAMPLES x GROUPS`` draws whatever the
    run's size (a report of 100,000 prompts per run stays in seconds).
    """
    n = len(columns[0])
    if n <= GROUPS:
        return columns
    order = np.random.default_rng(seed).permutation(n)
    starts = np.linspace(0, n, GROUPS, endpoint=False).astype(np.intp)
    return tuple(np.add.reduceat(column[order], starts) for column in columns)


def _batch(n: int) -> int:
    return max(1, _HELD // max(n, 1))


def _percentile(values: Array, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def _two_level(pairs: Sequence[tuple[Array, ...]], confidence: float, resamples: int,
               seed: int) -> tuple[float, float]:
    """Percentile interval of mean_r(candidate figure) / mean_r(baseline figure).

    Each resample draws as many repeat pairs as there are, with replacement, and
    within each drawn pair as many prompts as it holds, with replacement, the
    same prompts for both sides of the pair.  A pair drawn twice gets two
    independent prompt draws.
    """
    rng = np.random.default_rng(seed)
    repeats = len(pairs)
    picks = rng.integers(0, repeats, size=(resamples, repeats))
    cand = np.empty((resamples, repeats))
    base = np.empty((resamples, repeats))
    for slot in range(repeats):
        for r, (cn, cd, bn, bd) in enumerate(pairs):
            rows = np.flatnonzero(picks[:, slot] == r)
            step = _batch(len(cn))
            for start in range(0, len(rows), step):
                chunk = rows[start:start + step]
                idx = rng.integers(0, len(cn), size=(len(chunk), len(cn)))
                with np.errstate(divide="ignore", invalid="ignore"):
                    cand[chunk, slot] = cn[idx].sum(axis=1) / cd[idx].sum(axis=1)
                    base[chunk, slot] = bn[idx].sum(axis=1) / bd[idx].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _percentile(cand.mean(axis=1) / base.mean(axis=1), confidence)


def _scipy_interval(data: tuple[Array, ...], statistic: object, confidence: float,
                    resamples: int, seed: int) -> tuple[float, float]:
    # A resample may draw no draft (or no baseline time): its ratio is not finite.
    with np.errstate(divide="ignore", invalid="ignore"):
        result = stats.bootstrap(data, statistic, paired=True, vectorized=True,
                                 n_resamples=resamples, batch=_batch(len(data[0])),
                                 confidence_level=confidence, method=METHOD,
                                 rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_speedup(
    candidate: Sequence[RunSample],
    baseline: Sequence[RunSample],
    figure: Figure,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Interval | None:
    """The speedup of ``candidate`` over ``baseline`` with its paired bootstrap interval.

    ``candidate[r]`` and ``baseline[r]`` are repeat ``r`` of each side (the
    caller pairs them).  The estimate is mean over repeats of the candidate's
    figure / mean over repeats of the baseline's, each run's figure taken on
    the prompts both runs of its pair finished; with one repeat, the ratio of
    the two runs' figures.  None when a pair shares fewer than two prompts or
    the baseline's figure is zero.
    """
    pairs = [_paired(c, b, figure) for c, b in zip(candidate, baseline, strict=True)]
    if not pairs or any(len(p[0]) < 2 for p in pairs):  # noqa: PLR2004 - two to resample
        return None
    base_figures = [float(bn.sum() / bd.sum()) for _, _, bn, bd in pairs]
    if any(not np.isfinite(f) or f <= 0 for f in base_figures):
        return None
    cand_figures = [float(cn.sum() / cd.sum()) for cn, cd, _, _ in pairs]
    estimate = float(np.mean(cand_figures) / np.mean(base_figures))
    pairs = [_grouped(pair, seed) for pair in pairs]
    if len(pairs) == 1:
        low, high = _scipy_interval(pairs[0], _ratio_of_ratios, confidence, resamples, seed)
        kind = WITHIN_RUN
    else:
        low, high = _two_level(pairs, confidence, resamples, seed)
        kind = ACROSS_RUNS
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    # The percentile ends of a constant statistic can differ from it by rounding.
    low, high = min(low, estimate), max(high, estimate)
    return Interval(estimate, low, high, kind, confidence, resamples, seed)


def _sum_ratio(num: Array, den: Array, axis: int = -1) -> Array:
    result: Array = num.sum(axis=axis) / den.sum(axis=axis)
    return result


def request_ratio(
    sample: RunSample,
    which: Literal["acceptance_rate", "mean_acceptance_length"],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Interval | None:
    """Acceptance rate or mean acceptance length of one run, bootstrapped over requests.

    Token-weighted like the point figure: accepted / draft tokens, or 1 +
    accepted / drafts, of the resampled requests' summed counts.  Marked
    :data:`WITHIN_RUN`.  None with fewer than two requests or no drafts.
    """
    den = sample.draft_tokens if which == "acceptance_rate" else sample.drafts
    if len(den) < 2 or den.sum() <= 0:  # noqa: PLR2004 - two to resample
        return None
    offset = 0.0 if which == "acceptance_rate" else 1.0
    estimate = float(sample.accepted.sum() / den.sum()) + offset
    low, high = _scipy_interval(_grouped((sample.accepted, den), seed), _sum_ratio,
                                confidence, resamples, seed)
    if not (np.isfinite(low) and np.isfinite(high)):
        return None  # some resamples drew no drafts at all
    low, high = min(low + offset, estimate), max(high + offset, estimate)
    return Interval(estimate, low, high, WITHIN_RUN, confidence, resamples, seed)


CROSSED = "crossed"
"""The interval lies above 1 at the lower swept points and no longer at the crossover."""
NO_CROSSOVER = "above at every point"
"""The interval lies above 1 at every swept point: no crossover in the swept range."""
NOT_ABOVE_AT_START = "not above at the first point"
"""The interval does not lie above 1 even at the lowest swept point: the crossover is there."""


@frozen
class Crossover:
    """Where speculation's speedup stops being surely above 1 along a concurrency sweep."""

    concurrency: float | None
    """The lowest swept concurrency whose interval does not lie above 1; None for
    :data:`NO_CROSSOVER`."""
    outcome: str
    """:data:`CROSSED`, :data:`NO_CROSSOVER` or :data:`NOT_ABOVE_AT_START`."""


def crossover(points: Sequence[tuple[float, Interval]]) -> Crossover:
    """The lowest concurrency at which the speedup's interval no longer lies above 1.

    ``points`` pairs each swept concurrency with the speedup's interval there,
    in any order.  Going up the concurrencies, the crossover is the first whose
    interval's lower bound is at or below 1 (``not interval.above(1)``): from
    there on the sweep cannot tell speculation from no speedup.  The outcome is

    - :data:`CROSSED`: above 1 at every lower swept point, not at this one;
    - :data:`NOT_ABOVE_AT_START`: not above 1 already at the lowest point (the
      crossover is that point, at or below the swept range);
    - :data:`NO_CROSSOVER`: above 1 at every swept point (concurrency None: the
      crossover, if any, lies beyond the range).

    Higher points are not looked at once the crossover is found, even if their
    intervals lie above 1 again.

    Raises:
        ValueError: if ``points`` is empty, or a concurrency is not a finite
            number above 0 or appears twice.
    """
    if not points:
        raise ValueError("cannot find a crossover without swept points")
    levels = [level for level, _ in points]
    for level in levels:
        if not (np.isfinite(level) and level > 0):
            raise ValueError(f"a concurrency must be a finite number above 0, got {level}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"each concurrency must appear once, got {sorted(levels)}")
    ordered = sorted(points, key=lambda point: point[0])
    for index, (level, interval) in enumerate(ordered):
        if not interval.above(1.0):
            return Crossover(level, CROSSED if index else NOT_ABOVE_AT_START)
    return Crossover(None, NO_CROSSOVER)
