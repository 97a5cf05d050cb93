"""Tests of every formula in :mod:`specdec.metrics`, against hand-computed figures."""

from __future__ import annotations

import statistics

import attrs
import pytest

from specdec.metrics import (
    add_stats,
    decode_tokens_per_step,
    distribution,
    group_metrics,
    request_spec,
    request_tokens_per_s,
    spec_metrics,
    speedup,
    stats_from_histogram,
    summarise,
    turn_step_time,
    turn_tpot,
)
from specdec.records import (
    Distribution,
    RequestRecord,
    SpecMetrics,
    SpecStats,
    TurnRecord,
)


def turn(
    output_tokens: int,
    ttft_s: float,
    decode_s: float,
    prompt_tokens: int = 10,
    spec: SpecStats | None = None,
) -> TurnRecord:
    return TurnRecord(
        prompt="q",
        output="a",
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        ttft_s=ttft_s,
        decode_s=decode_s,
        spec=spec,
    )


def from_histogram(histogram: tuple[int, ...], draft_tokens: int) -> SpecStats:
    """Counts of one request from vLLM's per-request histogram, as docs/metrics.md states.

    drafts = sum(h), accepted = sum(j * h[j]), accepted at position i = sum of h[j] for j > i.
    """
    return SpecStats(
        num_drafts=sum(histogram),
        num_draft_tokens=draft_tokens,
        num_accepted_tokens=sum(j * c for j, c in enumerate(histogram)),
        accepted_per_position=tuple(sum(histogram[i + 1 :]) for i in range(len(histogram) - 1)),
        acceptance_histogram=histogram,
    )


# Request A (qa): two turns, 6 tokens in 1.0 s; drafts 2, 6 draft tokens, 3 accepted.
A_SPEC = from_histogram((0, 1, 1, 0), draft_tokens=6)
REQUEST_A = RequestRecord(
    id="a",
    category="qa",
    turns=(
        turn(5, 0.25, 0.5, prompt_tokens=10, spec=A_SPEC),
        turn(1, 0.25, 0.0, prompt_tokens=20, spec=SpecStats()),
    ),
)
# Request B (math): one turn, 9 tokens in 2.0 s; drafts 4, 12 draft tokens, 9 accepted.
B_SPEC = from_histogram((0, 1, 1, 2), draft_tokens=12)
REQUEST_B = RequestRecord(
    id="b",
    category="math",
    turns=(turn(9, 0.5, 1.5, prompt_tokens=8, spec=B_SPEC),),
)
# Request C (qa): one turn, 4 tokens in 1.0 s, no speculative counts.
REQUEST_C = RequestRecord(
    id="c",
    category="qa",
    turns=(turn(4, 0.25, 0.75, prompt_tokens=4),),
)
RECORDS = (REQUEST_A, REQUEST_B, REQUEST_C)


def test_histogram_counts_fixture() -> None:
    """The fixtures' counts are the ones the comments above state."""
    assert (A_SPEC.num_drafts, A_SPEC.num_accepted_tokens) == (2, 3)
    assert A_SPEC.accepted_per_position == (2, 1, 0)
    assert (B_SPEC.num_drafts, B_SPEC.num_accepted_tokens) == (4, 9)
    assert B_SPEC.accepted_per_position == (4, 3, 2)


def test_add_stats_pads_and_sums() -> None:
    """Counts add up; per-position and histogram tuples are padded to the longest."""
    first = SpecStats(
        num_drafts=2,
        num_draft_tokens=4,
        num_accepted_tokens=3,
        accepted_per_position=(2, 1),
        acceptance_histogram=(0, 1, 1),
        accepted_per_step=(1, 2),
    )
    second = SpecStats(
        num_drafts=3,
        num_draft_tokens=9,
        num_accepted_tokens=4,
        accepted_per_position=(2, 1, 1),
        acceptance_histogram=(1, 1, 0, 1),
        accepted_per_step=(0, 1, 3),
    )
    expected = SpecStats(
        num_drafts=5,
        num_draft_tokens=13,
        num_accepted_tokens=7,
        accepted_per_position=(4, 2, 1),
        acceptance_histogram=(1, 2, 1, 1),
        accepted_per_step=(),
    )

    assert expected == add_stats([first, second])
    assert expected == add_stats(iter([second, first]))


def test_add_stats_of_nothing_is_zero() -> None:
    """No items sum to all-zero counts."""
    assert SpecStats() == add_stats([])


def test_add_stats_of_one_drops_steps() -> None:
    """Even a single item's accepted_per_step is not carried into a sum."""
    assert attrs.evolve(A_SPEC, accepted_per_step=()) == add_stats(
        [attrs.evolve(A_SPEC, accepted_per_step=(1, 2))]
    )


def test_spec_metrics() -> None:
    """Rate, mean acceptance length and per-position acceptance, by hand."""
    stats = SpecStats(
        num_drafts=4,
        num_draft_tokens=16,
        num_accepted_tokens=6,
        accepted_per_position=(3, 2, 1, 0),
        acceptance_histogram=(1, 1, 1, 1, 0),
    )
    expected = SpecMetrics(
        num_drafts=4,
        num_draft_tokens=16,
        num_accepted_tokens=6,
        acceptance_rate=0.375,
        mean_acceptance_length=2.5,
        acceptance_per_position=(0.75, 0.5, 0.25, 0.0),
        acceptance_length_histogram=(1, 1, 1, 1, 0),
    )

    assert expected == spec_metrics(stats)


def test_spec_metrics_without_drafts() -> None:
    """Without drafts the ratios are undefined, not zero."""
    expected = SpecMetrics(
        num_drafts=0,
        num_draft_tokens=0,
        num_accepted_tokens=0,
        acceptance_rate=None,
        mean_acceptance_length=None,
        acceptance_per_position=(),
        acceptance_length_histogram=(),
    )

    assert expected == spec_metrics(SpecStats(accepted_per_position=(0, 0)))


def test_spec_metrics_of_engine_counters_has_no_histogram() -> None:
    """Engine counters carry no histogram, so the metrics show none."""
    counters = SpecStats(
        num_drafts=80,
        num_draft_tokens=308,
        num_accepted_tokens=43,
        accepted_per_position=(20, 12, 7, 4),
    )

    actual = spec_metrics(counters)

    assert actual.acceptance_length_histogram == ()
    assert actual.acceptance_rate == 43 / 308
    assert actual.mean_acceptance_length == 1 + 43 / 80
    assert actual.acceptance_per_position == (0.25, 0.15, 7 / 80, 0.05)


def test_distribution_of_one_value() -> None:
    """A single value is its own mean, median, percentiles and extremes."""
    assert Distribution(2.5, 2.5, 2.5, 2.5, 2.5, 2.5) == distribution([2.5])


def test_distribution_on_exact_ranks() -> None:
    """With 0..100 (shuffled) every percentile lands on a rank."""
    values = [float(v * 37 % 101) for v in range(101)]

    assert Distribution(50.0, 50.0, 90.0, 99.0, 0.0, 100.0) == distribution(values)


def test_distribution_interpolates_linearly() -> None:
    """Between two values the percentiles interpolate linearly."""
    actual = distribution([10.0, 0.0])

    assert (actual.mean, actual.median, actual.min, actual.max) == (5.0, 5.0, 0.0, 10.0)
    assert actual.p90 == pytest.approx(9.0)
    assert actual.p99 == pytest.approx(9.9)


def test_distribution_even_count_median() -> None:
    """The median of an even count is the mean of the two middle values."""
    actual = distribution([4.0, 1.0, 3.0, 2.0])

    assert actual.median == 2.5
    assert actual.mean == 2.5
    assert actual.p90 == pytest.approx(3.7)
    assert actual.p99 == pytest.approx(3.97)


def test_distribution_agrees_with_numpy_linear() -> None:
    """The percentiles match numpy's default ("linear") method."""
    np = pytest.importorskip("numpy")
    for n in (2, 3, 7, 50, 333):
        values = [(i * 7919 % 1009) / 97 for i in range(n)]

        actual = distribution(values)

        expected = np.percentile(values, [50, 90, 99])
        assert actual.median == pytest.approx(float(expected[0]), abs=1e-12)
        assert actual.p90 == pytest.approx(float(expected[1]), abs=1e-12)
        assert actual.p99 == pytest.approx(float(expected[2]), abs=1e-12)
        assert actual.mean == pytest.approx(statistics.fmean(values))


def test_distribution_of_nothing_raises() -> None:
    """No values is an error, not a row of zeros."""
    with pytest.raises(ValueError, match="no values"):
        distribution([])


def test_turn_tpot() -> None:
    """Decode time is spread over the tokens after the first."""
    assert turn_tpot(turn(5, 0.25, 0.5)) == 0.125
    assert turn_tpot(turn(2, 0.25, 0.5)) == 0.5
    assert turn_tpot(turn(1, 0.25, 0.0)) is None
    assert turn_tpot(turn(0, 0.25, 0.0)) is None


def test_step_time_and_tokens_per_step() -> None:
    """A step yields 1 + accepted tokens: 12 tokens, drafts accepting 3, 0 and 2 -> 6 steps."""
    drafted = turn(12, 0.1, 0.6, spec=stats_from_histogram([1, 0, 1, 1], 9, [3, 0, 2]))
    plain = turn(5, 0.1, 0.4)
    assert turn_step_time(drafted) == pytest.approx(0.1)
    assert turn_step_time(plain) == pytest.approx(0.1)
    assert turn_step_time(turn(1, 0.1, 0.0)) is None
    assert decode_tokens_per_step([drafted, plain, turn(1, 0.1, 0.0)]) == pytest.approx(15 / 10)
    assert decode_tokens_per_step([plain]) == 1
    assert decode_tokens_per_step([turn(0, 0.1, 0.0)]) is None


def test_request_tokens_per_s_sums_turns() -> None:
    """A request's rate is all its tokens over all its turns' TTFT + decode."""
    assert request_tokens_per_s(REQUEST_A) == 6.0
    assert request_tokens_per_s(REQUEST_B) == 4.5


def test_request_tokens_per_s_without_time() -> None:
    """A request that took no time has a rate of zero rather than an error."""
    record = RequestRecord(id="z", category="qa", turns=(turn(3, 0.0, 0.0),))

    assert request_tokens_per_s(record) == 0.0


def test_request_spec() -> None:
    """A request's counts are its turns' counts summed; none without counts."""
    expected = A_SPEC

    assert expected == request_spec(REQUEST_A)
    assert request_spec(REQUEST_C) is None


def test_request_spec_skips_turns_without_counts() -> None:
    """Turns without counts are left out of the sum."""
    record = RequestRecord(
        id="m", category="qa", turns=(turn(3, 0.1, 0.2), turn(3, 0.1, 0.2, spec=B_SPEC))
    )

    expected = B_SPEC

    assert expected == request_spec(record)


def test_per_request_counts_sum_to_engine_counters() -> None:
    """Requests' counts from their histograms add up to the engine's counter difference.

    The first histogram is the one seen on the CPU ([0, 0, 1, 0, 1], 8 draft tokens);
    the engine's figures are what its counters would have grown by over both requests.
    """
    first = from_histogram((0, 0, 1, 0, 1), draft_tokens=8)
    second = from_histogram((2, 1, 0, 1, 0), draft_tokens=16)
    records = [
        RequestRecord(id="1", category="x", turns=(turn(8, 0.1, 0.5, spec=first),)),
        RequestRecord(id="2", category="x", turns=(turn(8, 0.1, 0.5, spec=second),)),
    ]
    engine_counters = SpecStats(
        num_drafts=6,
        num_draft_tokens=24,
        num_accepted_tokens=10,
        accepted_per_position=(4, 3, 2, 1),
    )

    summed = add_stats(s for r in records if (s := request_spec(r)) is not None)

    assert engine_counters == attrs.evolve(summed, acceptance_histogram=())
    summary = summarise(records, elapsed_s=1.0, engine_counters=engine_counters)
    assert summary.overall.spec is not None
    assert summary.engine_spec == attrs.evolve(summary.overall.spec, acceptance_length_histogram=())


def test_group_metrics() -> None:
    """Every aggregate of three requests, by hand."""
    actual = group_metrics(RECORDS)

    assert actual.requests == 3
    assert actual.turns == 4
    assert actual.prompt_tokens == 42
    assert actual.output_tokens == 19
    assert actual.walltime_total_s == 4.0
    assert actual.walltime_s == distribution([1.0, 2.0, 1.0])
    assert actual.walltime_s.median == 1.0
    assert actual.ttft_s == distribution([0.25, 0.25, 0.5, 0.25])
    assert actual.tpot_s == distribution([0.125, 0.1875, 0.25])
    assert actual.tokens_per_s_total == 4.75
    assert actual.tokens_per_s_mean == pytest.approx(14.5 / 3)
    assert actual.spec == SpecMetrics(
        num_drafts=6,
        num_draft_tokens=18,
        num_accepted_tokens=12,
        acceptance_rate=12 / 18,
        mean_acceptance_length=3.0,
        acceptance_per_position=(1.0, 4 / 6, 2 / 6),
        acceptance_length_histogram=(0, 2, 2, 2),
    )
    # Request-averaged differs from token-weighted: (0.5 + 0.75) / 2 against 12 / 18.
    assert actual.spec_request_mean_acceptance_rate == 0.625
    assert actual.spec_request_mean_acceptance_length == 2.875


def test_group_metrics_without_speculation() -> None:
    """Without counts the spec fields are None; one-token turns have no TPOT."""
    records = [RequestRecord(id="1", category="x", turns=(turn(1, 0.5, 0.0),))]

    actual = group_metrics(records)

    assert actual.spec is None
    assert actual.spec_request_mean_acceptance_rate is None
    assert actual.spec_request_mean_acceptance_length is None
    assert actual.tpot_s is None
    assert actual.tokens_per_s_total == 2.0


def test_group_metrics_with_counts_but_no_drafts() -> None:
    """Counts with zero drafts give spec metrics without ratios, and no request means."""
    records = [RequestRecord(id="1", category="x", turns=(turn(4, 0.5, 0.5, spec=SpecStats()),))]

    actual = group_metrics(records)

    assert actual.spec == spec_metrics(SpecStats())
    assert actual.spec_request_mean_acceptance_rate is None
    assert actual.spec_request_mean_acceptance_length is None


def test_group_metrics_of_nothing_raises() -> None:
    """An empty group, or one without turns, is an error."""
    with pytest.raises(ValueError, match="no requests"):
        group_metrics([])
    with pytest.raises(ValueError, match="no turns"):
        group_metrics([RequestRecord(id="1", category="x", turns=())])


def test_summarise_splits_categories() -> None:
    """Categories are grouped, sorted by name, and throughput uses the elapsed time."""
    counters = SpecStats(num_drafts=6, num_draft_tokens=18, num_accepted_tokens=12)

    actual = summarise(RECORDS, elapsed_s=2.0, engine_counters=counters)

    assert list(actual.categories) == ["math", "qa"]
    assert actual.categories["qa"] == group_metrics([REQUEST_A, REQUEST_C])
    assert actual.categories["math"] == group_metrics([REQUEST_B])
    assert actual.categories["qa"].output_tokens == 10
    assert actual.categories["qa"].tokens_per_s_mean == 5.0
    assert actual.categories["math"].spec_request_mean_acceptance_rate == 0.75
    assert actual.overall == group_metrics(RECORDS)
    assert actual.elapsed_s == 2.0
    # Batch-like: per-request walltimes (4.0 s in all) overlap within 2.0 s elapsed.
    assert actual.throughput_tokens_per_s == 9.5
    assert actual.engine_spec == spec_metrics(counters)


def test_summarise_without_counters_or_records() -> None:
    """No engine counters give no engine_spec; no records is an error."""
    assert summarise(RECORDS, elapsed_s=4.0, engine_counters=None).engine_spec is None
    with pytest.raises(ValueError, match="without requests"):
        summarise([], elapsed_s=1.0, engine_counters=None)


def test_speedup() -> None:
    """Speedup is the candidate's rate over the baseline's; undefined for a zero baseline."""
    assert speedup(6.0, 4.0) == 1.5
    assert speedup(2.0, 4.0) == 0.5
    assert speedup(1.0, 0.0) is None
