"""The sampled lossless check's statistics on synthetic multinomial samples (no engine).

Calibration: identical distributions raise false alarms at about the nominal
rate; a shifted one is detected; the power statement tightens with more
samples; corner cases give clear results or clear errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from specdec.sampled_lossless import (
    ALPHA,
    MIN_EXPECTED,
    ArmComparison,
    SampledVerdict,
    chi_square,
    compare_arms,
    detectable_tv,
    head_mass,
    holm,
    perturbed,
    pool,
    total_variation,
)
from specdec.serialization import structure, unstructure

Samples = dict[str, list[tuple[int, ...]]]


def _zipf(size: int, exponent: float, temperature: float = 1.0) -> np.ndarray:
    """A Zipf-like next-token distribution, sharpened or flattened by a temperature."""
    weights = (1 / np.arange(1, size + 1) ** exponent) ** (1 / temperature)
    result: np.ndarray = weights / weights.sum()
    return result


def _draw(rng: np.random.Generator, n: int, positions: list[np.ndarray]) -> list[tuple[int, ...]]:
    """``n`` samples whose token at each position is drawn from that position's distribution."""
    columns = [rng.choice(len(p), size=n, p=p) for p in positions]
    return [tuple(int(c[i]) for c in columns) for i in range(n)]


def _arms(rng: np.random.Generator, prompts: int, sizes: tuple[int, int],
          baseline: list[np.ndarray], candidate: list[np.ndarray]) -> tuple[Samples, Samples]:
    return ({f"p{i}": _draw(rng, sizes[0], baseline) for i in range(prompts)},
            {f"p{i}": _draw(rng, sizes[1], candidate) for i in range(prompts)})


PEAKED = [np.r_[0.6, 0.4 * _zipf(20, 1.0)], _zipf(30, 1.5), _zipf(10, 2.0)]
"""Three positions: a confident first token, then a long tail, then a sharp one."""


def _binomial_band(rate: float, trials: int, sigmas: float = 3.0) -> tuple[float, float]:
    spread = sigmas * math.sqrt(rate * (1 - rate) / trials)
    return rate - spread, rate + spread


def test_chi_square_is_scipys_test_of_homogeneity() -> None:
    """The vectorized statistic, degrees of freedom and p-value are scipy's (no Yates)."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        table = rng.integers(1, 40, size=(2, int(rng.integers(2, 8))))
        statistic, dof, p_value = chi_square(table[0], table[1])
        expected = stats.chi2_contingency(table, correction=False)
        assert statistic[0] == pytest.approx(expected.statistic)
        assert dof[0] == expected.dof
        assert p_value[0] == pytest.approx(expected.pvalue)
    assert chi_square(np.array([5, 0]), np.array([7, 0]))[2][0] == 1.0  # one column: no test


def test_holm_adjusts_step_down() -> None:
    """Holm's adjusted p-values by hand: sorted, times (m - rank), made monotone, capped at 1."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_pooling_leaves_every_expected_count_at_the_minimum() -> None:
    """After pooling each kept cell's expected count in either arm is at least 5.

    Rare categories are summed into the last column; the arms' totals are kept.
    """
    rng = np.random.default_rng(4)
    for sizes in ((60, 60), (40, 200), (300, 300)):
        b = rng.multinomial(sizes[0], _zipf(40, 1.1))
        c = rng.multinomial(sizes[1], _zipf(40, 1.1))
        pooled = pool(b, c)
        pb, pc = pooled.baseline[0], pooled.candidate[0]
        assert (pb.sum(), pc.sum()) == sizes
        column = pb + pc
        present = column > 0
        smaller = min(sizes) * column[present] / sum(sizes)
        assert (smaller >= MIN_EXPECTED).all()
        assert 1 < pooled.categories[0] < 40


def test_perturbation_moves_exactly_the_asked_total_variation() -> None:
    """perturbed(p, d) is a distribution at TV d from p, up to the head's mass."""
    for p in (_zipf(30, 1.2), np.array([0.9, 0.1]), np.array([1.0]), np.array([0.5, 0.5, 0.0])):
        largest = head_mass(p)
        for d in np.linspace(0, largest, 7):
            q = perturbed(p, float(d))
            padded = np.r_[p, 0.0] if len(p) == 1 else p
            assert q.sum() == pytest.approx(1.0)
            assert total_variation(padded, q)[0] == pytest.approx(d, abs=1e-12)


def _family_false_alarms(seed: int, sizes: tuple[int, int]) -> bool:
    rng = np.random.default_rng(seed)
    baseline, candidate = _arms(rng, 4, sizes, PEAKED, PEAKED)
    return compare_arms(baseline, candidate, length=3, simulations=0,
                        resamples=0).detected


@pytest.mark.parametrize("sizes", [(300, 300), (150, 450)])
def test_identical_distributions_alarm_at_about_the_nominal_rate(
        sizes: tuple[int, int]) -> None:
    """One cell's pooled test rejects about 5% of the time when nothing differs.

    2,000 simulated tables of the peaked first token and of the long-tailed
    second position, equal and unequal arms: the rate is within three binomial
    standard deviations of 0.05.  Over a whole comparison (4 prompts x 3 prefix
    lengths, Holm), 200 seeded comparisons alarm at most at 0.05 (plus the same
    tolerance): Holm keeps the family-wise rate at or under alpha.
    """
    rng = np.random.default_rng(5)
    trials = 2000
    for position in PEAKED[:2]:
        b = rng.multinomial(sizes[0], position, size=trials)
        c = rng.multinomial(sizes[1], position, size=trials)
        pooled = pool(b, c)
        rate = float(np.mean(chi_square(pooled.baseline, pooled.candidate)[2] <= ALPHA))
        low, high = _binomial_band(ALPHA, trials)
        assert low <= rate <= high, rate
    comparisons = 200
    alarms = sum(_family_false_alarms(seed, sizes) for seed in range(comparisons))
    assert alarms / comparisons <= _binomial_band(ALPHA, comparisons)[1]


def test_a_shifted_distribution_is_detected() -> None:
    """A temperature change from 1.0 to 1.5 at the second token is detected at 400 samples.

    The first token is the same in both arms; the verdict names a cell of
    length 2 or more, with a TV interval above 0.
    """
    rng = np.random.default_rng(6)
    shifted = [PEAKED[0], _zipf(30, 1.5, temperature=1.5), PEAKED[2]]
    baseline, candidate = _arms(rng, 3, (400, 400), PEAKED, shifted)
    result = compare_arms(baseline, candidate, length=3, names=("baseline", "ngram"))
    assert result.detected
    strongest = result.rejected[0]
    assert strongest.length >= 2
    assert strongest.tv_low > 0
    assert result.statement().startswith("difference detected: ")
    assert not any(c.rejected for c in result.cells if c.length == 1)


def test_a_small_change_in_every_prompt_is_seen_more_often_combined() -> None:
    """A change common to every prompt shows more often in the prompts' summed test.

    8 prompts, 300 samples per arm, the first token's temperature 1.0 against
    1.2 (a TV of about 0.1), 40 seeded comparisons: the combined cell rejects
    in more of them than the prompts' own cells do (about 0.8 against 0.6).
    """
    combined = alone = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        baseline, candidate = _arms(rng, 8, (300, 300), [_zipf(30, 1.2)],
                                    [_zipf(30, 1.2, temperature=1.2)])
        result = compare_arms(baseline, candidate, length=1, simulations=0, resamples=0)
        combined += any(c.rejected for c in result.cells if c.prompt is None)
        alone += any(c.rejected for c in result.cells if c.prompt is not None)
    assert combined > alone
    assert combined >= 28


def test_power_statement_tightens_with_more_samples() -> None:
    """The smallest TV detected with 80% power falls as the sample grows (same distribution)."""
    p = _zipf(20, 1.2)
    bounds = []
    for n in (100, 400, 1600):
        found, at, largest = detectable_tv([p], [(n, n)], level=ALPHA / 12)
        assert found is not None
        assert at >= 0.8
        assert found <= largest
        bounds.append(found)
    assert bounds[0] > bounds[1] > bounds[2]


def test_the_statement_names_the_bound_by_prefix_length() -> None:
    """Without a difference, the statement gives the TV detectable with 80% per length."""
    rng = np.random.default_rng(7)
    baseline, candidate = _arms(rng, 2, (300, 300), PEAKED[:2], PEAKED[:2])
    result = compare_arms(baseline, candidate, length=2)
    assert not result.detected
    bounds = result.bounds()
    combined = result.bounds(combined=True)
    assert sorted(bounds) == sorted(combined) == [1, 2]
    assert {c.prompt for c in combined.values()} == {None}
    for length in (1, 2):
        one, every = bounds[length].detectable_tv, combined[length].detectable_tv
        assert one is not None
        assert every is not None
        assert every < one  # a change in every prompt is seen sooner than in one alone
    text = result.statement()
    assert text.startswith("no difference detected; a total-variation distance above ")
    assert "the same TV in every prompt at once, above " in text
    assert "would have been detected with probability at least 0.80" in text
    assert f"first token: {bounds[1].detectable_tv:.3f}" in text


def test_one_token_always_is_a_clear_result() -> None:
    """Both arms always draw the same tokens: nothing to test, said so; a change is bounded.

    A TV above the bound (the candidate drawing a prefix the baseline never
    does) would have been detected.
    """
    same = {"p": [(7, 8)] * 200}
    result = compare_arms(same, same, length=2)
    assert not result.detected
    assert {c.categories for c in result.cells} == {1}
    assert {c.p_value for c in result.cells} == {1.0}
    assert all("same prefix" in (c.note or "") for c in result.cells)
    assert all(c.detectable_tv is not None and c.detectable_tv < 0.2 for c in result.cells)


def test_all_distinct_tokens_cannot_be_tested_and_say_so() -> None:
    """Every sample different: no prefix stands apart, nothing is tested, power is unbounded."""
    baseline = {"p": [(i,) for i in range(100)]}
    candidate = {"p": [(i,) for i in range(100, 200)]}
    result = compare_arms(baseline, candidate, length=1)
    [cell] = result.cells
    assert not result.detected
    assert cell.categories == 1
    assert "too few samples" in (cell.note or "")
    assert cell.detectable_tv is None
    assert "could have been missed at every prefix length" in result.statement()


def test_unequal_sample_sizes_and_short_samples() -> None:
    """Arms of different sizes compare; a sample that ended early is a prefix of its own."""
    rng = np.random.default_rng(8)
    baseline, candidate = _arms(rng, 2, (120, 360), PEAKED[:2], PEAKED[:2])
    baseline["p0"] = [s[:1] if i % 10 == 0 else s for i, s in enumerate(baseline["p0"])]
    result = compare_arms(baseline, candidate, length=2)
    assert {(c.baseline_samples, c.candidate_samples) for c in result.cells
            if c.prompt is not None} == {(120, 360)}
    assert {(c.baseline_samples, c.candidate_samples) for c in result.cells
            if c.prompt is None} == {(240, 720)}
    assert not result.detected


def test_bad_inputs_are_clear_errors() -> None:
    """Different prompt sets, an empty arm or no prefix length are refused with the reason."""
    with pytest.raises(ValueError, match=r"same prompts; only one has \['b'\]"):
        compare_arms({"a": [(1,)]}, {"a": [(1,)], "b": [(1,)]}, length=1)
    with pytest.raises(ValueError, match=r"prompts \['a'\] have no samples"):
        compare_arms({"a": []}, {"a": [(1,)]}, length=1)
    with pytest.raises(ValueError, match="prefix length must be at least 1"):
        compare_arms({"a": [(1,)]}, {"a": [(1,)]}, length=0)


def _comparison(detected: bool) -> ArmComparison:  # noqa: FBT001 - a test helper
    rng = np.random.default_rng(9)
    other = [_zipf(20, 1.0, temperature=3.0)] if detected else PEAKED[:1]
    baseline, candidate = _arms(rng, 2, (300, 300), PEAKED[:1], other)
    return compare_arms(baseline, candidate, length=1, names=("T=0.7", "T=0.8"))


def test_verdict_outcomes_and_the_positive_control() -> None:
    """The verdict fails on a difference, passes only when the control was seen.

    An unseen control makes the check inconclusive and says its pass means little.
    """
    seen, unseen = _comparison(detected=True), _comparison(detected=False)
    assert seen.detected
    assert not unseen.detected
    assert SampledVerdict(strategy=unseen, control=seen).outcome == "pass"
    assert SampledVerdict(strategy=seen, control=seen).outcome == "difference"
    inconclusive = SampledVerdict(strategy=unseen, control=unseen)
    assert inconclusive.outcome == "inconclusive"
    assert "its pass means little" in inconclusive.lines()[-1]


def test_results_round_trip_through_the_converter() -> None:
    """A verdict unstructures to JSON-ready data and structures back to the same record."""
    verdict = SampledVerdict(strategy=_comparison(detected=False),
                             control=_comparison(detected=True))
    data = unstructure(verdict)
    assert structure(data, SampledVerdict) == verdict
    assert data["control"]["cells"][0]["top"][0]["tokens"] == [0]
