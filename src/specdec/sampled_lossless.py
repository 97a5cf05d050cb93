"""The sampled lossless check's statistics: do two sets of samples come from one distribution?

Under sampling, "lossless" means speculation leaves the output distribution
unchanged; no comparison of single texts can show that.  So for each prompt
both arms (say the baseline and a strategy) draw many seeded samples of the
first ``M`` tokens, and for each prefix length ``m`` in ``1..M`` the two
samples of prefixes are compared (:func:`compare_arms`).  Everything here is
pure statistics on token ids: no engine, no vLLM.  Its design (what is tested,
the assumptions, the measured false-alarm rate and power) is in
``docs/lossless.md``.

- **Categories.**  A sample's category at length ``m`` is its first ``m`` token
  ids (a sample that ended sooner is its whole self, a category of its own).
  Testing prefixes rather than the ``m``-th token alone sees a change in any
  conditional distribution up to ``m``.
- **Pooling** (:func:`pool`).  A chi-square test needs expected counts of at
  least :data:`MIN_EXPECTED` in every cell.  Categories whose expected count in
  the smaller arm falls short are pooled into one "other" category (and if that
  is still short, the next rarest is added to it).  Pooling looks only at the
  two arms' summed counts, which under no difference carry no information about
  which arm a sample came from.  Where one category is left (every sample of
  both arms shares the prefix, or there are too few samples) there is nothing
  to test: p-value 1, and the cell says why.
- **Test** (:func:`chi_square`).  Pearson's chi-square test of homogeneity on
  the 2 x K table, without Yates' correction (it is conservative; the pooling
  already keeps the approximation sound), ``K - 1`` degrees of freedom.
- **Correction** (:func:`holm`).  Holm's step-down adjustment over every cell
  (prompts x prefix lengths) of one comparison, so the chance of any false
  alarm in a comparison is at most ``alpha`` under any dependence between cells
  (the prefix lengths of one prompt are nested, so they are dependent).
- **Effect size.**  The total-variation distance over the pooled categories,
  ``TV = 1/2 * sum_k |b_k/n_b - c_k/n_c|``, with a basic bootstrap interval
  (each arm resampled from its own counts; :func:`tv_interval`).  It is biased
  upward (two samples of one distribution differ by chance), so the test, not
  the interval, decides.
- **Power** (:func:`detectable_tv`).  For each cell, by simulation: the
  baseline's proportions ``p`` over the prefixes seen, and ``q`` =
  :func:`perturbed` ``(p, D)``, which moves mass ``D`` from the most likely
  prefixes (half the mass) to the rest, in proportion to their probability, as
  a higher temperature flattens a distribution (TV(p, q) = D); multinomial
  draws of both arms at the sample sizes used, pooled and tested as the
  observed table is, at the first step of Holm's procedure (``alpha`` over the
  number of cells).  The smallest ``D`` detected with probability
  :data:`POWER` is found by bisection, with the same random draws at every
  ``D``.  Per prefix length the comparison states the largest over its
  prompts: a TV above it in the first ``m`` tokens of any one prompt would have
  been detected with at least that probability.  Where a prompt's prefixes are
  too many and too rare for the samples drawn, no ``D`` is detected that often
  and the statement says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from attrs import frozen
from scipy import stats

from specdec.records import CHECK_ALPHA, CHECK_POWER

if TYPE_CHECKING:
    from numpy.typing import NDArray

    Counts = NDArray[np.int64]
    Floats = NDArray[np.float64]

__all__ = [
    "ALPHA",
    "MIN_EXPECTED",
    "POWER",
    "ArmComparison",
    "CellTest",
    "PrefixCount",
    "SampledVerdict",
    "chi_square",
    "compare_arms",
    "detectable_tv",
    "holm",
    "perturbed",
    "pool",
    "total_variation",
]

ALPHA = CHECK_ALPHA
"""The family-wise false-alarm rate of one comparison (every prompt and prefix length)."""
POWER = CHECK_POWER
"""The detection probability the power statement is made at."""
MIN_EXPECTED = 5.0
"""The smallest expected count a chi-square cell may have (the textbook rule)."""
SIMULATIONS = 400
"""Simulated tables per TV distance tried in the power search."""
BISECTIONS = 12
"""Steps of the power search: the detectable TV is found to 1/4096 of its range."""
RESAMPLES = 1000
"""Bootstrap resamples of each cell's TV interval."""
CONFIDENCE = 0.95
SEED = 0
SHOWN_PREFIXES = 5
"""The most common prefixes a cell keeps as evidence, with each arm's counts."""

Sample = Sequence[int]
"""One sample: the token ids of one continuation (its first ``M`` tokens)."""


@frozen
class PrefixCount:
    """How often each arm drew one prefix (``tokens`` None: the pooled rare prefixes)."""

    tokens: tuple[int, ...] | None
    baseline: int
    candidate: int


@frozen
class CellTest:
    """One prompt's samples at one prefix length compared, or every prompt's at once.

    ``prompt`` None is the combined cell of a length: the prompts' chi-square
    statistics and degrees of freedom summed (their samples and categories
    too; ``tv`` is their mean).  ``p_value`` is the chi-square test's (1 where
    nothing could be tested, ``note`` says why); ``p_adjusted`` is Holm's over
    the comparison's cells and ``rejected`` whether it is at most ``alpha``.
    ``tv`` is the total variation over the pooled categories with its basic
    bootstrap interval.  ``detectable_tv`` is the smallest TV this cell
    detects with the target power (for a combined cell, the same TV in every
    prompt at once); None: not even ``largest_tv``, the most the perturbation
    can move, at which the power was ``power_at``.  ``power_at`` is the
    simulated power at ``detectable_tv`` where there is one.  ``top`` holds a
    prompt's most common prefixes with each arm's counts, as evidence.
    """

    prompt: str | None
    length: int
    baseline_samples: int
    candidate_samples: int
    categories: int
    statistic: float
    dof: int
    p_value: float
    p_adjusted: float
    rejected: bool
    tv: float
    tv_low: float
    tv_high: float
    detectable_tv: float | None
    power_at: float
    largest_tv: float
    top: tuple[PrefixCount, ...] = ()
    note: str | None = None

    @property
    def where(self) -> str:
        """Which samples the cell compares, as a reader says it."""
        prompts = "every prompt at once" if self.prompt is None else f"prompt {self.prompt!r}"
        return f"{prompts}, {_tokens(self.length)}"


@frozen
class ArmComparison:
    """Two arms' samples compared at every prompt and prefix length, Holm-corrected.

    ``baseline`` and ``candidate`` name the arms (a strategy, a temperature).
    """

    baseline: str
    candidate: str
    alpha: float
    power: float
    cells: tuple[CellTest, ...]

    @property
    def detected(self) -> bool:
        """Whether any cell's difference survives the correction."""
        return any(c.rejected for c in self.cells)

    @property
    def rejected(self) -> tuple[CellTest, ...]:
        """The cells that differ, the smallest adjusted p-value first."""
        return tuple(sorted((c for c in self.cells if c.rejected),
                            key=lambda c: (c.p_adjusted, -c.tv)))

    def bounds(self, *, combined: bool = False) -> dict[int, CellTest]:
        """Per prefix length, the cell that sets the comparison's power bound there.

        Of the prompts' own cells, the one whose detectable TV is largest (one
        bounding none first): a TV above it in the first ``length`` tokens of
        any one prompt would have been detected with the target power.  With
        ``combined``, the combined cells: a TV above theirs in every prompt at
        once would have been.
        """
        worst: dict[int, CellTest] = {}
        for cell in self.cells:
            if (cell.prompt is None) != combined:
                continue
            held = worst.get(cell.length)
            if held is None or _weaker(cell, held):
                worst[cell.length] = cell
        return dict(sorted(worst.items()))

    def statement(self) -> str:
        """What the comparison found, and at what power, in one sentence."""
        if self.detected:
            first = self.rejected[0]
            return (f"difference detected: {len(self.rejected)} of {len(self.cells)} tests "
                    f"reject at a family-wise false-alarm rate of {self.alpha:g} (Holm); the "
                    f"strongest at {first.where}: TV {first.tv:.3f} [{first.tv_low:.3f}, "
                    f"{first.tv_high:.3f}], adjusted p {first.p_adjusted:.2g}")
        by_length = self.bounds()
        if not by_length:
            return "nothing was tested: no prompt had samples in both arms"
        listed = "; ".join(_bound(cell) for cell in by_length.values())
        bounded = [cell for cell in by_length.values() if cell.detectable_tv is not None]
        together = [c for c in self.bounds(combined=True).values() if c.detectable_tv is not None]
        also = ""
        if together:
            best = min(together, key=lambda c: c.detectable_tv or 0.0)
            also = (f"; the same TV in every prompt at once, above {best.detectable_tv:.3f} in "
                    f"the {_tokens(best.length)}")
        if not bounded:
            return (f"no difference detected, but a difference in one prompt alone could have "
                    f"been missed at every prefix length ({listed}){also}: draw more samples")
        headline = bounded[-1]
        return (f"no difference detected; a total-variation distance above "
                f"{headline.detectable_tv:.3f} in the {_tokens(headline.length)} of any one "
                f"prompt{also} would have been detected with probability at least "
                f"{self.power:.2f} (one prompt, by prefix length: {listed})")


def _tokens(length: int) -> str:
    return "first token" if length == 1 else f"first {length} tokens"


def _bound(cell: CellTest) -> str:
    if cell.detectable_tv is not None:
        return f"{_tokens(cell.length)}: {cell.detectable_tv:.3f}"
    return (f"{_tokens(cell.length)}: no bound ({cell.where}: a TV of {cell.largest_tv:.3f} "
            f"detected with probability {cell.power_at:.2f})")


def _weaker(cell: CellTest, than: CellTest) -> bool:
    """Whether ``cell`` bounds a larger TV than ``than`` does (bounding none is weakest)."""
    if (cell.detectable_tv is None) != (than.detectable_tv is None):
        return cell.detectable_tv is None
    if cell.detectable_tv is None or than.detectable_tv is None:
        return cell.power_at < than.power_at
    return cell.detectable_tv > than.detectable_tv


Outcome = Literal["pass", "difference", "inconclusive"]


@frozen
class SampledVerdict:
    """The strategy's comparison with the baseline, and the positive control's.

    The control compares the baseline with itself at another temperature, a
    real but small difference: a check that cannot see it has too little power
    for its pass to mean much.
    """

    strategy: ArmComparison
    control: ArmComparison

    @property
    def outcome(self) -> Outcome:
        """``difference``, ``inconclusive`` (the control was not detected) or ``pass``."""
        if self.strategy.detected:
            return "difference"
        if not self.control.detected:
            return "inconclusive"
        return "pass"

    def lines(self) -> list[str]:
        """The verdict as a reader sees it: the strategy's, then the control's."""
        strategy = f"{self.strategy.candidate} vs {self.strategy.baseline}: "
        control = f"positive control, {self.control.candidate} vs {self.control.baseline}: "
        lines = [strategy + self.strategy.statement(), control + self.control.statement()]
        if not self.control.detected:
            lines.append(f"this check could not see the difference between "
                         f"{self.control.baseline} and {self.control.candidate}; its pass "
                         "means little: draw more samples or widen the control")
        return lines


def prefix_counts(samples: Sequence[Sample], length: int) -> Counter[tuple[int, ...]]:
    """How often each prefix of ``length`` tokens occurs (a shorter sample is itself)."""
    return Counter(tuple(int(t) for t in sample[:length]) for sample in samples)


@frozen
class Pooled:
    """2 x K tables with their rare categories pooled (:func:`pool`), one per row.

    ``order`` lists each row's columns by total count, most common first (ties
    in column order); the first ``kept`` of them stand alone and the rest are
    summed into the last column of ``baseline`` and ``candidate`` (zero where
    nothing is pooled; a zero column is no category).
    """

    order: Counts
    kept: Counts
    baseline: Counts
    candidate: Counts

    @property
    def categories(self) -> Counts:
        """Each row's number of categories: the kept ones, and the pool if it has any."""
        pooled: Counts = (self.baseline[:, -1] + self.candidate[:, -1] > 0).astype(np.int64)
        return self.kept + pooled


def pool(baseline: Counts, candidate: Counts, min_expected: float = MIN_EXPECTED) -> Pooled:
    """Pool each 2 x K table's rare categories, so every expected count is ``min_expected``.

    ``baseline`` and ``candidate`` hold counts over the same K categories,
    shape ``(K,)`` or ``(S, K)``.  A category stands alone when its expected
    count in the smaller arm, ``min(n_b, n_c) * total / (n_b + n_c)``, is at
    least ``min_expected``; the rest are pooled, and while the pool falls short
    the rarest category standing alone joins it.  The rule reads only the
    column totals, which under no difference say nothing of which arm a sample
    came from; the same function pools the observed tables and the simulated
    ones of the power search.
    """
    b = np.atleast_2d(np.asarray(baseline, dtype=np.int64))
    c = np.atleast_2d(np.asarray(candidate, dtype=np.int64))
    n_b, n_c = b.sum(axis=1), c.sum(axis=1)
    if np.any(n_b == 0) or np.any(n_c == 0):
        msg = f"both arms need samples to compare (got {n_b.tolist()} and {n_c.tolist()})"
        raise ValueError(msg)
    need = (min_expected * (n_b + n_c) / np.minimum(n_b, n_c))[:, None]
    total = b + c
    order = np.argsort(-total, axis=1, kind="stable")
    b_sorted = np.take_along_axis(b, order, axis=1)
    c_sorted = np.take_along_axis(c, order, axis=1)
    t_sorted = b_sorted + c_sorted
    width = total.shape[1]
    index = np.arange(width)[None, :]
    alone = (t_sorted >= need).sum(axis=1)  # a prefix of the sorted columns
    # suffix[j]: the pool's total when the first j columns stand alone.
    suffix = np.concatenate([np.cumsum(t_sorted[:, ::-1], axis=1)[:, ::-1],
                             np.zeros((len(b), 1), dtype=np.int64)], axis=1)
    candidates = (np.arange(width + 1)[None, :] <= alone[:, None]) & (
        (suffix >= need) | (np.arange(width + 1)[None, :] == width))
    # The most columns standing alone that leave the pool empty or large enough; else none.
    kept = np.where(candidates.any(axis=1),
                    width - np.argmax(candidates[:, ::-1], axis=1), 0).astype(np.int64)
    standing = index < kept[:, None]
    b_out = np.concatenate([np.where(standing, b_sorted, 0),
                            np.where(standing, 0, b_sorted).sum(axis=1, keepdims=True)], axis=1)
    c_out = np.concatenate([np.where(standing, c_sorted, 0),
                            np.where(standing, 0, c_sorted).sum(axis=1, keepdims=True)], axis=1)
    return Pooled(order, kept, b_out, c_out)


def chi_square(baseline: Counts, candidate: Counts) -> tuple[Floats, Counts, Floats]:
    """Pearson's chi-square test of homogeneity of 2 x K tables, vectorized.

    ``baseline`` and ``candidate`` hold counts, shape ``(K,)`` or ``(S, K)``
    (S tables).  Returns the statistics, the degrees of freedom (columns with
    a count, less one) and the p-values (1 where one column is left).
    """
    b = np.atleast_2d(baseline).astype(np.float64)
    c = np.atleast_2d(candidate).astype(np.float64)
    n_b = b.sum(axis=1, keepdims=True)
    n_c = c.sum(axis=1, keepdims=True)
    column = b + c
    present = column > 0
    safe = np.where(present, column, 1.0)
    e_b = n_b * safe / (n_b + n_c)
    e_c = n_c * safe / (n_b + n_c)
    terms = np.where(present, (b - e_b) ** 2 / e_b + (c - e_c) ** 2 / e_c, 0.0)
    statistic = terms.sum(axis=1)
    dof = present.sum(axis=1) - 1
    p_value = np.where(dof > 0, stats.chi2.sf(statistic, np.maximum(dof, 1)), 1.0)
    return statistic, dof.astype(np.int64), p_value


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: reject those at most ``alpha``.

    Sorted ascending, the ``j``-th smallest (from 0) becomes
    ``max over i <= j of min(1, (m - i) * p_(i))``; the family-wise error rate is
    at most ``alpha`` whatever the dependence between the tests.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def total_variation(baseline: Counts | Floats, candidate: Counts | Floats) -> Floats:
    """Half the L1 distance between the two arms' proportions, per table (vectorized)."""
    b = np.atleast_2d(baseline).astype(np.float64)
    c = np.atleast_2d(candidate).astype(np.float64)
    tv: Floats = 0.5 * np.abs(b / b.sum(axis=1, keepdims=True)
                              - c / c.sum(axis=1, keepdims=True)).sum(axis=1)
    return tv


def resampled_tv(baseline: Counts, candidate: Counts, rng: np.random.Generator,
                 resamples: int = RESAMPLES) -> Floats:
    """The TV of ``resamples`` bootstrap resamples, each arm drawn from its own counts."""
    n_b, n_c = int(baseline.sum()), int(candidate.sum())
    return total_variation(rng.multinomial(n_b, baseline / n_b, size=resamples),
                           rng.multinomial(n_c, candidate / n_c, size=resamples))


def basic_interval(estimate: float, resampled: Floats,
                   confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The basic bootstrap interval of a TV, clipped to [0, 1].

    The plug-in TV is biased upward, and a resample's TV more so: the
    percentile interval would sit above the estimate.  The basic interval,
    ``[2 * tv - q_high, 2 * tv - q_low]`` of the resampled TVs' quantiles,
    takes that shift off once.
    """
    tails = (1 - confidence) / 2
    q_low, q_high = np.quantile(resampled, [tails, 1 - tails])
    return (min(max(2 * estimate - float(q_high), 0.0), 1.0),
            min(max(2 * estimate - float(q_low), 0.0), 1.0))


def _head_and_tail(probabilities: Floats) -> tuple[Floats, Counts, Counts]:
    """The probabilities (one new category added to a single one), head and tail indices.

    The head is the most likely categories, taken until they hold half the
    mass (at least one, never all); the tail is the rest.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if len(p) == 1:
        p = np.array([p[0], 0.0])
    p = p / p.sum()
    order = np.argsort(-p, kind="stable")
    heads = min(int(np.searchsorted(np.cumsum(p[order]), 0.5)) + 1, len(p) - 1)
    return p, order[:heads], order[heads:]


def perturbed(probabilities: Floats, distance: float) -> Floats:
    """``probabilities`` flattened: mass ``distance`` moved from the head to the tail.

    The head is the most likely categories, taken until they hold half the
    mass; the tail is the rest (a single category gets a new one as its tail).
    Mass leaves the head and enters the tail in proportion to each category's
    probability (uniformly over the tail where it has none), as a higher
    temperature flattens a distribution; the total variation between the two
    is ``distance``, at most the head's mass (:func:`head_mass`).
    """
    p, head, tail = _head_and_tail(probabilities)
    tail_mass = p[tail].sum()
    into = p[tail] / tail_mass if tail_mass > 0 else np.full(len(tail), 1 / len(tail))
    q = p.copy()
    q[head] -= distance * p[head] / p[head].sum()
    q[tail] += distance * into
    q = np.clip(q, 0.0, None)
    result: Floats = q / q.sum()
    return result


def head_mass(probabilities: Floats) -> float:
    """The most :func:`perturbed` can move: the head's share of the mass."""
    p, head, _ = _head_and_tail(probabilities)
    return float(p[head].sum())


def _combined_p_values(statistics: Floats, dofs: Counts) -> Floats:
    """The p-values of summed chi-square statistics (independent tables), 1 with no dof."""
    p_values: Floats = np.where(dofs > 0, stats.chi2.sf(statistics, np.maximum(dofs, 1)), 1.0)
    return p_values


def _power(probabilities: Sequence[Floats], distance: float, sizes: Sequence[tuple[int, int]],
           *, level: float, simulations: int, seed: int) -> float:
    """How often the test rejects when every table's candidate is perturbed by ``distance``.

    One table: its pooled chi-square test.  Several (prompts, tested at
    once): their statistics and degrees of freedom summed.
    """
    # The same seed at every distance: the power curve is searched on common draws.
    rng = np.random.default_rng(seed)
    statistic = np.zeros(simulations)
    dof = np.zeros(simulations, dtype=np.int64)
    for p, (n_b, n_c) in zip(probabilities, sizes, strict=True):
        pooled = pool(rng.multinomial(n_b, p, size=simulations),
                      rng.multinomial(n_c, perturbed(p, distance), size=simulations))
        table_statistic, table_dof, _ = chi_square(pooled.baseline, pooled.candidate)
        statistic += table_statistic
        dof += table_dof
    return float(np.mean(_combined_p_values(statistic, dof) <= level))


def detectable_tv(probabilities: Sequence[Floats], sizes: Sequence[tuple[int, int]], *,
                  level: float, power: float = POWER, simulations: int = SIMULATIONS,
                  seed: int = SEED) -> tuple[float | None, float, float]:
    """The smallest TV (by :func:`perturbed`) the test detects with probability ``power``.

    ``probabilities`` are the baseline's proportions over the prefixes seen,
    one array per table, ``sizes`` each table's two sample counts, ``level``
    the test's (Holm's first step).  With one table, its own test; with
    several, the combined test with every table perturbed by the same TV.
    Each simulated table is pooled and tested as the observed one is.  Found
    by bisection over ``(0, largest]``, ``largest`` being the most the
    perturbation can move in every table (:func:`head_mass`, at least 0.5).
    Returns the distance (None if even ``largest`` is detected less often),
    the simulated power there (at ``largest`` when None), and ``largest``.
    """
    # A table of one prefix gets a second, never drawn: the change is a new prefix.
    ps = [_head_and_tail(p)[0] for p in probabilities]
    largest = min(head_mass(p) for p in ps)

    def at(distance: float) -> float:
        return _power(ps, distance, sizes, level=level, simulations=simulations, seed=seed)

    at_largest = at(largest)
    if at_largest < power:
        return None, at_largest, largest
    low, high, at_high = 0.0, largest, at_largest
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        at_middle = at(middle)
        if at_middle >= power:
            high, at_high = middle, at_middle
        else:
            low = middle
    return high, at_high, largest


@frozen
class _Table:
    """One cell's counts over the prefixes either arm drew, and their pooling."""

    prompt: str
    length: int
    keys: tuple[tuple[int, ...], ...]
    baseline: Counts
    candidate: Counts
    pooled: Pooled

    @classmethod
    def of(cls, prompt: str, length: int, baseline: Sequence[Sample],
           candidate: Sequence[Sample]) -> _Table:
        b_counts = prefix_counts(baseline, length)
        c_counts = prefix_counts(candidate, length)
        keys = tuple(sorted(set(b_counts) | set(c_counts)))
        b = np.array([b_counts.get(k, 0) for k in keys], dtype=np.int64)
        c = np.array([c_counts.get(k, 0) for k in keys], dtype=np.int64)
        return cls(prompt, length, keys, b, c, pool(b, c))

    def top(self) -> tuple[PrefixCount, ...]:
        """The most common prefixes standing alone, then the pool, with each arm's counts."""
        kept = int(self.pooled.kept[0])
        shown = [PrefixCount(self.keys[int(i)], int(self.baseline[i]), int(self.candidate[i]))
                 for i in self.pooled.order[0][:min(kept, SHOWN_PREFIXES)]]
        pooled_b, pooled_c = int(self.pooled.baseline[0, -1]), int(self.pooled.candidate[0, -1])
        if pooled_b + pooled_c:
            shown.append(PrefixCount(None, pooled_b, pooled_c))
        return tuple(shown)

    def note(self) -> str | None:
        """Why nothing could be tested here, if so."""
        if int(self.pooled.categories[0]) > 1:
            return None
        if len(self.keys) == 1:
            return "every sample of both arms has the same prefix: nothing to test"
        return (f"{len(self.keys)} prefixes, none drawn often enough to stand apart at "
                f"{MIN_EXPECTED:g} expected samples: too few samples to test")


def compare_arms(baseline: Mapping[str, Sequence[Sample]],
                 candidate: Mapping[str, Sequence[Sample]], *, length: int,
                 names: tuple[str, str] = ("baseline", "candidate"), alpha: float = ALPHA,
                 power: float = POWER, seed: int = SEED, simulations: int = SIMULATIONS,
                 resamples: int = RESAMPLES) -> ArmComparison:
    """Compare two arms' samples, prompt by prompt, at every prefix length up to ``length``.

    ``baseline`` and ``candidate`` map each prompt id to its samples (token
    ids, the first ``length`` of each used); the two must hold the same
    prompts, each with at least one sample per arm.  The arms' samples must be
    independent draws (different seeds): the test assumes it.  With several
    prompts, each length also gets a combined cell (``prompt`` None): the sum
    of the prompts' statistics, which sees a small change common to every
    prompt that no prompt alone shows.  ``simulations`` 0 skips the power
    search (every cell then bounds no TV), ``resamples`` 0 the TV intervals
    (each is then its estimate): for calibration runs.
    """
    if length < 1:
        msg = f"the prefix length must be at least 1 (got {length})"
        raise ValueError(msg)
    if set(baseline) != set(candidate):
        only = sorted(set(baseline) ^ set(candidate))
        msg = f"the two arms must sample the same prompts; only one has {only}"
        raise ValueError(msg)
    empty = sorted(p for p in baseline if not baseline[p] or not candidate[p])
    if empty:
        msg = f"prompts {empty} have no samples in one of the arms: nothing to compare"
        raise ValueError(msg)
    # The family: at each length, every prompt's table, and with several prompts
    # their combined test (None): Holm runs over all of them.
    family: list[tuple[int, list[_Table], str | None]] = []
    for m in range(1, length + 1):
        tables = [_Table.of(prompt, m, baseline[prompt], candidate[prompt])
                  for prompt in baseline]
        family += [(m, [table], table.prompt) for table in tables]
        if len(tables) > 1:
            family.append((m, tables, None))
    tests = [_test(tables) for _, tables, _ in family]
    adjusted = holm([p for _, _, p in tests])
    level = alpha / len(family)
    rng = np.random.default_rng(seed)
    cells = []
    for (m, tables, prompt), (statistic, dof, p_value), p_adjusted in zip(
            family, tests, adjusted, strict=True):
        tv, low, high = _tv(tables, rng, resamples)
        probabilities = [t.baseline / t.baseline.sum() for t in tables]
        sizes = [(int(t.baseline.sum()), int(t.candidate.sum())) for t in tables]
        found, at, largest = (None, 0.0, min(head_mass(p) for p in probabilities))
        if simulations > 0:
            found, at, largest = detectable_tv(probabilities, sizes, level=level, power=power,
                                               simulations=simulations, seed=seed)
        single = tables[0] if prompt is not None else None
        cells.append(CellTest(
            prompt=prompt, length=m, baseline_samples=sum(n for n, _ in sizes),
            candidate_samples=sum(n for _, n in sizes),
            categories=sum(int(t.pooled.categories[0]) for t in tables),
            statistic=statistic, dof=dof, p_value=p_value, p_adjusted=p_adjusted,
            rejected=p_adjusted <= alpha, tv=tv, tv_low=low, tv_high=high,
            detectable_tv=found, power_at=at, largest_tv=largest,
            top=single.top() if single else (), note=single.note() if single else None))
    return ArmComparison(names[0], names[1], alpha, power, tuple(cells))


def _test(tables: Sequence[_Table]) -> tuple[float, int, float]:
    """The chi-square statistic, dof and p-value of one table, or of several summed."""
    statistic, dof = 0.0, 0
    for table in tables:
        one_statistic, one_dof, _ = chi_square(table.pooled.baseline, table.pooled.candidate)
        statistic += float(one_statistic[0])
        dof += int(one_dof[0])
    p_value = float(_combined_p_values(np.array([statistic]), np.array([dof]))[0])
    return statistic, dof, p_value


def _tv(tables: Sequence[_Table], rng: np.random.Generator,
        resamples: int) -> tuple[float, float, float]:
    """The mean TV of ``tables`` (pooled) and its basic bootstrap interval (:func:`tv_interval`)."""
    b = [t.pooled.baseline[0] for t in tables]
    c = [t.pooled.candidate[0] for t in tables]
    estimate = float(np.mean([total_variation(x, y)[0] for x, y in zip(b, c, strict=True)]))
    if resamples <= 0:
        return estimate, estimate, estimate
    drawn = np.mean([resampled_tv(x, y, rng, resamples) for x, y in zip(b, c, strict=True)],
                    axis=0)
    return (estimate, *basic_interval(estimate, drawn))
