"""Goodput under SLOs (specdec.metrics) and the concurrency crossover (specdec.intervals).

Every expected figure is worked out by hand from times that are exact in binary
(0.125, 0.25, 0.5 s), so the comparisons are exact, limits included.
"""

from __future__ import annotations

import math

import cattrs
import pytest

from specdec.errors import InvalidOptionError
from specdec.intervals import (
    CROSSED,
    NO_CROSSOVER,
    NOT_ABOVE_AT_START,
    WITHIN_RUN,
    Crossover,
    Interval,
    crossover,
)
from specdec.metrics import Goodput, Slo, goodput, meets_slo, turn_meets_slo
from specdec.records import RequestRecord, TurnRecord
from specdec.serialization import problems, structure


def _turn(ttft_s: float, decode_s: float, output_tokens: int) -> TurnRecord:
    return TurnRecord(prompt="p", output="o", prompt_tokens=4, output_tokens=output_tokens,
                      ttft_s=ttft_s, decode_s=decode_s)


def _request(*turns: TurnRecord, error: str | None = None, rid: str = "q") -> RequestRecord:
    return RequestRecord(id=rid, category="c", turns=turns, error=error)


# ttft 0.25 s; tpot = 1.0 / (5 - 1) = 0.25 s; end-to-end = 0.25 + 1.0 = 1.25 s.
TURN = _turn(ttft_s=0.25, decode_s=1.0, output_tokens=5)


# --- one request against each kind of limit ---------------------------------


@pytest.mark.parametrize(("slo", "verdict"), [
    (Slo(ttft_ms=250), "good"),     # at the limit: met (vLLM's limit >= value)
    (Slo(ttft_ms=300), "good"),
    (Slo(ttft_ms=249), "bad"),
    (Slo(tpot_ms=250), "good"),
    (Slo(tpot_ms=249), "bad"),
    (Slo(e2el_ms=1250), "good"),
    (Slo(e2el_ms=1249), "bad"),
])
def test_each_limit_alone(slo: Slo, verdict: str) -> None:
    assert turn_meets_slo(TURN, slo) is (verdict == "good")


def test_tpot_is_decode_time_over_tokens_after_the_first() -> None:
    # decode 0.5 s over 3 tokens: tpot = 0.5 / 2 = 0.25 s, not 0.5 / 3.
    turn = _turn(ttft_s=0.125, decode_s=0.5, output_tokens=3)
    assert turn_meets_slo(turn, Slo(tpot_ms=250))
    assert not turn_meets_slo(turn, Slo(tpot_ms=200))


@pytest.mark.parametrize("tokens", [0, 1])
def test_a_turn_without_a_second_token_meets_any_tpot_limit(tokens: int) -> None:
    # vLLM counts the tpot of output_len <= 1 as 0; its decode time is not spread.
    turn = _turn(ttft_s=0.25, decode_s=2.0, output_tokens=tokens)
    assert turn_meets_slo(turn, Slo(tpot_ms=0.001))
    # ...but its end-to-end latency (2.25 s) still counts.
    assert not turn_meets_slo(turn, Slo(tpot_ms=0.001, e2el_ms=2000))
    assert turn_meets_slo(turn, Slo(tpot_ms=0.001, e2el_ms=2250))


@pytest.mark.parametrize(("slo", "verdict"), [
    (Slo(ttft_ms=250, tpot_ms=250, e2el_ms=1250), "good"),
    (Slo(ttft_ms=250, tpot_ms=249, e2el_ms=1250), "bad"),  # tpot alone fails
    (Slo(ttft_ms=249, tpot_ms=250, e2el_ms=1250), "bad"),  # ttft alone fails
    (Slo(ttft_ms=250, tpot_ms=250, e2el_ms=1249), "bad"),  # e2el alone fails
    (Slo(ttft_ms=1000, tpot_ms=100), "bad"),
])
def test_combined_limits_must_all_be_met(slo: Slo, verdict: str) -> None:
    assert turn_meets_slo(TURN, slo) is (verdict == "good")


def test_a_request_is_good_only_when_it_succeeded_and_every_turn_is() -> None:
    slo = Slo(ttft_ms=250)
    slow = _turn(ttft_s=0.5, decode_s=0.25, output_tokens=2)
    assert meets_slo(_request(TURN, TURN), slo)
    assert not meets_slo(_request(TURN, slow), slo)
    assert not meets_slo(_request(TURN, error="timed out"), slo)
    assert not meets_slo(_request(), slo)


# --- the share and the rate -------------------------------------------------


def test_goodput_counts_share_and_rate() -> None:
    slo = Slo(ttft_ms=250, e2el_ms=1250)
    records = [
        _request(TURN, rid="a"),                                          # good
        _request(_turn(0.5, 0.25, 2), rid="b"),                           # ttft 500 ms
        _request(TURN, error="connection reset", rid="c"),                # failed
        _request(_turn(0.125, 0.5, 3), rid="d"),                          # good
        _request(_turn(0.125, 1.5, 3), rid="e"),                          # e2el 1625 ms
    ]
    # 2 good of 5; 2 good over 4 s = 0.5 requests/s.
    assert goodput(records, slo, duration_s=4.0) == Goodput(
        good=2, requests=5, share=0.4, rate_per_s=0.5)


def test_goodput_of_all_good_and_none_good() -> None:
    records = [_request(TURN, rid=str(i)) for i in range(4)]
    assert goodput(records, Slo(ttft_ms=250), 0.5) == Goodput(4, 4, 1.0, 8.0)
    assert goodput(records, Slo(ttft_ms=125), 0.5) == Goodput(0, 4, 0.0, 0.0)


@pytest.mark.parametrize("duration", [0.0, -1.0, math.nan, math.inf])
def test_goodput_refuses_a_duration_that_is_not_positive(duration: float) -> None:
    with pytest.raises(ValueError, match="duration"):
        goodput([_request(TURN)], Slo(ttft_ms=250), duration)


def test_goodput_refuses_no_requests() -> None:
    with pytest.raises(ValueError, match="no requests"):
        goodput([], Slo(ttft_ms=250), 1.0)


# --- validation and structuring ---------------------------------------------


def test_an_slo_needs_a_limit() -> None:
    with pytest.raises(InvalidOptionError, match="at least one"):
        Slo()


@pytest.mark.parametrize("value", [0.0, -5.0, math.nan, math.inf])
@pytest.mark.parametrize("name", ["ttft_ms", "tpot_ms", "e2el_ms"])
def test_each_limit_must_be_a_finite_number_above_zero(name: str, value: float) -> None:
    with pytest.raises(InvalidOptionError, match=name) as caught:
        Slo(**{name: value})
    assert caught.value.field == name


def test_an_slo_structures_from_a_mapping() -> None:
    assert structure({"ttft_ms": 200, "tpot_ms": 50}, Slo) == Slo(ttft_ms=200.0, tpot_ms=50.0)
    assert structure({"e2el_ms": 1500.5}, Slo) == Slo(e2el_ms=1500.5)


@pytest.mark.parametrize(("data", "expected"), [
    ({"ttft_ms": 200, "tpot": 50},
     ["extra fields found (tpot); did you mean 'tpot_ms'? @ $"]),
    ({"ttft_ms": "200"},
     ["expected a number, got the string '200': write the number without quotes @ $.ttft_ms"]),
    ({"ttft_ms": True}, ["expected a number, got true @ $.ttft_ms"]),
    ({"tpot_ms": 0}, ["tpot_ms must be > 0, got 0 @ $.tpot_ms"]),
    ({}, ["an SLO needs at least one of ttft_ms, tpot_ms and e2el_ms @ $"]),
    ("ttft:200", ["expected a mapping, got the string 'ttft:200' @ $"]),
])
def test_structuring_refuses_bad_slos_clearly(data: object, expected: list[str]) -> None:
    with pytest.raises((cattrs.BaseValidationError, InvalidOptionError)) as caught:
        structure(data, Slo)
    assert problems(caught.value) == expected


# --- the crossover ----------------------------------------------------------


def _interval(low: float, high: float) -> Interval:
    return Interval((low + high) / 2, low, high, WITHIN_RUN)


ABOVE = _interval(1.25, 1.75)
STRADDLING = _interval(0.875, 1.125)
BELOW = _interval(0.5, 0.75)


def test_crossover_at_the_first_point_not_above_one() -> None:
    points = [(1.0, ABOVE), (4.0, ABOVE), (16.0, STRADDLING), (64.0, BELOW)]
    assert crossover(points) == Crossover(16.0, CROSSED)


def test_crossover_sorts_the_points_and_ignores_higher_ones() -> None:
    # Out of order (read as given, 4 would be the first point), and above 1
    # again at 16: the crossover is still 4.
    points = [(4.0, BELOW), (16.0, ABOVE), (1.0, ABOVE)]
    assert crossover(points) == Crossover(4.0, CROSSED)


def test_no_crossover_when_above_one_at_every_point() -> None:
    points = [(1.0, ABOVE), (2.0, _interval(1.0625, 1.5)), (8.0, ABOVE)]
    assert crossover(points) == Crossover(None, NO_CROSSOVER)


def test_crossover_at_the_start_when_never_above_one() -> None:
    points = [(2.0, STRADDLING), (8.0, BELOW)]
    assert crossover(points) == Crossover(2.0, NOT_ABOVE_AT_START)
    # Not above at the start, whatever comes after.
    assert crossover([(2.0, BELOW), (8.0, ABOVE)]) == Crossover(2.0, NOT_ABOVE_AT_START)


def test_a_lower_bound_of_exactly_one_is_no_longer_above_one() -> None:
    points = [(1.0, ABOVE), (2.0, _interval(1.0, 1.5)), (4.0, BELOW)]
    assert crossover(points) == Crossover(2.0, CROSSED)
    # Just above 1 still counts as above.
    points = [(1.0, ABOVE), (2.0, _interval(math.nextafter(1.0, 2.0), 1.5)), (4.0, BELOW)]
    assert crossover(points) == Crossover(4.0, CROSSED)


def test_a_single_point() -> None:
    assert crossover([(8.0, ABOVE)]) == Crossover(None, NO_CROSSOVER)
    assert crossover([(8.0, _interval(1.0, 1.25))]) == Crossover(8.0, NOT_ABOVE_AT_START)


@pytest.mark.parametrize(("points", "match"), [
    ([], "without swept points"),
    ([(1.0, ABOVE), (1.0, BELOW)], "appear once"),
    ([(0.0, ABOVE)], "above 0"),
    ([(-2.0, ABOVE)], "above 0"),
    ([(math.nan, ABOVE)], "above 0"),
])
def test_crossover_refuses_bad_sweeps(points: list[tuple[float, Interval]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        crossover(points)


# --- agreement with vLLM's own bench serve ------------------------------------


def test_goodput_agrees_with_vllm_bench_serve() -> None:
    """The same requests through vLLM 0.32.0's ``calculate_metrics`` give the same rate.

    Times are multiples of 1/64 s, so latency - ttft is exact in both and only
    the limits decide; limits sit on and next to the values.
    """
    serve = pytest.importorskip("vllm.benchmarks.serve")
    output = pytest.importorskip("vllm.benchmarks.lib.endpoint_request_func").RequestFuncOutput
    records: list[RequestRecord] = []
    outputs = []
    for i in range(60):
        ttft, decode, tokens = (i % 7 + 1) / 64, (i % 11) / 16, i % 6
        failed = i % 13 == 0
        records.append(_request(_turn(ttft, decode, tokens), rid=str(i),
                                error="reset" if failed else None))
        outputs.append(output(success=not failed, latency=ttft + decode, output_tokens=tokens,
                              ttft=ttft, start_time=i / 8, prompt_len=4, itl=[]))
    slos = [{"ttft": 62.5}, {"tpot": 125.0}, {"e2el": 390.625}, {"tpot": 40.0, "e2el": 500.0},
            {"ttft": 78.125, "tpot": 125.0, "e2el": 700.0}]
    duration = 8.0
    for config in slos:
        metrics, _ = serve.calculate_metrics([], outputs, duration, None, [99.0], config)
        slo = Slo(**{f"{name}_ms": value for name, value in config.items()})
        mine = goodput(records, slo, duration)
        assert 0 < mine.good < len(records) - 5, config  # the limits do sort the requests
        assert mine.rate_per_s == metrics.request_goodput, config
