"""Every formula specdec reports, each defined once (see ``docs/metrics.md``).

The functions here are pure: they turn per-request records and engine counters
into :class:`~specdec.records.SpecMetrics`, :class:`~specdec.records.GroupMetrics`
and :class:`~specdec.records.RunSummary`.  Nothing here times anything or talks
to an engine.
"""

from __future__ import annotations

import math
import statistics
from itertools import zip_longest
from typing import TYPE_CHECKING

from attrs import field, frozen

from specdec.errors import InvalidOptionError
from specdec.records import (
    Distribution,
    GroupMetrics,
    RequestRecord,
    RunSummary,
    SpecMetrics,
    SpecStats,
    TurnRecord,
)
from specdec.validators import above_zero

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "Goodput",
    "Slo",
    "add_stats",
    "decode_steps",
    "decode_tokens_per_step",
    "distribution",
    "goodput",
    "group_metrics",
    "meets_slo",
    "request_spec",
    "request_tokens_per_s",
    "spec_bench_accept_lengths",
    "spec_bench_accept_totals",
    "spec_bench_mean_accepted_tokens",
    "spec_bench_mean_accepted_tokens_by_category",
    "spec_bench_speedup",
    "spec_metrics",
    "speedup",
    "summarise",
    "turn_decode_steps",
    "turn_meets_slo",
    "turn_step_time",
    "turn_tpot",
]


def _sum_tuples(tuples: Iterable[tuple[int, ...]]) -> tuple[int, ...]:
    """Element-wise sum, shorter tuples padded with zeros."""
    return tuple(sum(column) for column in zip_longest(*tuples, fillvalue=0))


def add_stats(items: Iterable[SpecStats]) -> SpecStats:
    """Sum speculative counts element-wise (turns into a request, requests into a run).

    ``num_drafts``, ``num_draft_tokens`` and ``num_accepted_tokens`` are added;
    ``accepted_per_position`` and ``acceptance_histogram`` are added position by
    position, the shorter ones padded with zeros.  ``accepted_per_step`` is left
    empty: the order of steps across turns or requests means nothing.  No items
    give all-zero counts.
    """
    items = list(items)
    return SpecStats(
        num_drafts=sum(s.num_drafts for s in items),
        num_draft_tokens=sum(s.num_draft_tokens for s in items),
        num_accepted_tokens=sum(s.num_accepted_tokens for s in items),
        accepted_per_position=_sum_tuples(s.accepted_per_position for s in items),
        acceptance_histogram=_sum_tuples(s.acceptance_histogram for s in items),
    )


def stats_from_histogram(
    histogram: Sequence[int], num_draft_tokens: int, accepted_per_step: Sequence[int] = ()
) -> SpecStats:
    """One request's counts from vLLM's per-request acceptance histogram.

    ``histogram[j]`` counts verify steps that accepted exactly ``j`` draft
    tokens, so drafts = sum(histogram), accepted = sum(j * histogram[j]), and
    position ``i`` was accepted in every step with ``j > i``: accepted at
    position i = sum of histogram[j] for j > i.  These are the engine
    counters' own definitions, counted per request.
    """
    counts = [int(c) for c in histogram]
    return SpecStats(
        num_drafts=sum(counts),
        num_draft_tokens=int(num_draft_tokens),
        num_accepted_tokens=sum(j * c for j, c in enumerate(counts)),
        accepted_per_position=tuple(sum(counts[i + 1 :]) for i in range(len(counts) - 1)),
        acceptance_histogram=tuple(counts),
        accepted_per_step=tuple(int(a) for a in accepted_per_step),
    )


def subtract_stats(after: SpecStats, before: SpecStats) -> SpecStats:
    """Counter deltas: ``after - before`` element-wise (per-position tuples padded)."""
    positions = zip_longest(after.accepted_per_position, before.accepted_per_position,
                            fillvalue=0)
    return SpecStats(
        num_drafts=after.num_drafts - before.num_drafts,
        num_draft_tokens=after.num_draft_tokens - before.num_draft_tokens,
        num_accepted_tokens=after.num_accepted_tokens - before.num_accepted_tokens,
        accepted_per_position=tuple(a - b for a, b in positions),
    )


def spec_metrics(stats: SpecStats) -> SpecMetrics:
    """Acceptance figures of one set of counts.

    - acceptance rate = accepted / draft tokens (None without draft tokens);
    - mean acceptance length = 1 + accepted / drafts (None without drafts): the
      tokens one verify step yields, the target model's own token included;
    - acceptance at position i = accepted_per_position[i] / drafts (empty without
      drafts);
    - ``acceptance_length_histogram`` is ``stats.acceptance_histogram`` unchanged:
      index j counts drafts that accepted exactly j draft tokens, that is drafts of
      acceptance length j + 1 (empty when only engine counters were available).
    """
    drafts = stats.num_drafts
    accepted = stats.num_accepted_tokens
    return SpecMetrics(
        num_drafts=drafts,
        num_draft_tokens=stats.num_draft_tokens,
        num_accepted_tokens=accepted,
        acceptance_rate=accepted / stats.num_draft_tokens if stats.num_draft_tokens else None,
        mean_acceptance_length=1 + accepted / drafts if drafts else None,
        acceptance_per_position=(
            tuple(a / drafts for a in stats.accepted_per_position) if drafts else ()
        ),
        acceptance_length_histogram=stats.acceptance_histogram,
    )


def _percentile(ordered: Sequence[float], percent: float) -> float:
    """The ``percent`` percentile of sorted values by linear interpolation.

    The value at rank h = (n - 1) * percent / 100, interpolated between the two
    nearest ranks: numpy's default ``"linear"`` method (Hyndman & Fan type 7).
    """
    rank = (len(ordered) - 1) * percent / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def distribution(values: Sequence[float]) -> Distribution:
    """Mean, median, 90th and 99th percentiles, minimum and maximum of ``values``.

    Percentiles interpolate linearly between ranks (numpy's default method): the
    p-th percentile of n sorted values x[0..n-1] is at rank h = (n - 1) * p / 100,
    x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)]).  The median is
    the 50th percentile.  One value is every figure at once.

    Raises:
        ValueError: if ``values`` is empty.
    """
    if not values:
        raise ValueError("cannot describe the distribution of no values")
    ordered = sorted(values)
    return Distribution(
        mean=statistics.fmean(ordered),
        median=_percentile(ordered, 50),
        p90=_percentile(ordered, 90),
        p99=_percentile(ordered, 99),
        min=ordered[0],
        max=ordered[-1],
    )


def turn_tpot(turn: TurnRecord) -> float | None:
    """Time per output token: decode_s / (output_tokens - 1).

    The first token's time is the TTFT, so the decode time is spread over the
    remaining tokens.  None when fewer than two tokens were generated.
    """
    if turn.output_tokens <= 1:
        return None
    return turn.decode_s / (turn.output_tokens - 1)


def decode_steps(output_tokens: int, spec: SpecStats | None) -> int:
    """Decode steps of one turn: the target's forward passes after the prefill.

    The prefill yields the first token; each decode step then yields 1 token
    plus the draft tokens it accepted, whether or not it carried a draft (a step
    without one yields exactly 1).  So steps = output_tokens - 1 - accepted.
    vLLM counts a step's accepted tokens before ``max_tokens`` or a stop cuts the
    output, so the last step can claim more tokens than were kept; the steps are
    then at least the drafts counted:

        steps = max(output_tokens - 1 - num_accepted_tokens, num_drafts)

    which is the number of :func:`spec_bench_accept_lengths` entries after the
    prefill's.  Without counts (speculation off) steps = output_tokens - 1.  0
    when the turn generated at most one token.
    """
    if output_tokens <= 1:
        return 0
    if spec is None:
        return output_tokens - 1
    return max(output_tokens - 1 - spec.num_accepted_tokens, spec.num_drafts)


def turn_decode_steps(turn: TurnRecord) -> int:
    """:func:`decode_steps` of a turn's output tokens and counts."""
    return decode_steps(turn.output_tokens, turn.spec)


def turn_step_time(turn: TurnRecord) -> float | None:
    """Mean seconds per decode step of one turn: decode_s / :func:`turn_decode_steps`.

    ``decode_s`` runs from the first token to the last, which is exactly the
    decode steps' time.  None when the turn has no decode step.
    """
    steps = turn_decode_steps(turn)
    return turn.decode_s / steps if steps else None


def decode_tokens_per_step(turns: Iterable[TurnRecord]) -> float | None:
    """Tokens each decode step yields, over ``turns``.

        tokens per step = sum(output_tokens - 1) / sum(decode steps)

    over the turns that have a decode step (:func:`turn_decode_steps`); the
    prefill's first token is left out on both sides.  1 without speculation.
    None when no turn has a decode step.
    """
    tokens = steps = 0
    for turn in turns:
        turn_steps = turn_decode_steps(turn)
        if turn_steps:
            tokens += turn.output_tokens - 1
            steps += turn_steps
    return tokens / steps if steps else None


def _rate(tokens: int, seconds: float) -> float:
    """Tokens per second, 0.0 when no time has passed."""
    return tokens / seconds if seconds > 0 else 0.0


def request_tokens_per_s(record: RequestRecord) -> float:
    """A request's own token rate: output tokens / walltime, over all its turns.

    The walltime is the sum over turns of TTFT + decode time (as Spec-Bench sums a
    question's turns).  0.0 when the walltime is zero.
    """
    return _rate(record.output_tokens, record.walltime_s)


def request_spec(record: RequestRecord) -> SpecStats | None:
    """A request's speculative counts: :func:`add_stats` of its turns' counts.

    None when no turn carries counts (speculation off).
    """
    stats = [t.spec for t in record.turns if t.spec is not None]
    return add_stats(stats) if stats else None


def group_metrics(records: Sequence[RequestRecord]) -> GroupMetrics:
    """Every aggregate of one group of requests.

    - ``walltime_total_s`` sums the requests' walltimes; ``walltime_s`` is their
      distribution over requests; ``ttft_s`` is over turns; ``tpot_s`` is over the
      turns that have a :func:`turn_tpot` (None if none has);
    - ``tokens_per_s_total`` = output tokens / ``walltime_total_s`` (token-weighted);
      ``tokens_per_s_mean`` = mean over requests of :func:`request_tokens_per_s`
      (request-averaged, Spec-Bench's figure);
    - ``spec`` = :func:`spec_metrics` of the summed counts of every turn
      (token-weighted; None if no turn has counts);
    - ``spec_request_mean_acceptance_rate`` and ``..._length`` average each
      request's own acceptance rate and mean acceptance length over the requests
      where that figure is defined (None if there are none).

    Raises:
        ValueError: if ``records`` is empty or holds no turn.
    """
    if not records:
        raise ValueError("cannot aggregate no requests")
    turns = [t for r in records for t in r.turns]
    if not turns:
        raise ValueError("cannot aggregate requests that have no turns")
    output_tokens = sum(t.output_tokens for t in turns)
    walltime_total = sum(r.walltime_s for r in records)
    tpots = [tpot for t in turns if (tpot := turn_tpot(t)) is not None]

    turn_stats = [t.spec for t in turns if t.spec is not None]
    request_figures = [
        spec_metrics(stats) for r in records if (stats := request_spec(r)) is not None
    ]
    rates = [m.acceptance_rate for m in request_figures if m.acceptance_rate is not None]
    lengths = [
        m.mean_acceptance_length for m in request_figures if m.mean_acceptance_length is not None
    ]
    return GroupMetrics(
        requests=len(records),
        turns=len(turns),
        prompt_tokens=sum(t.prompt_tokens for t in turns),
        output_tokens=output_tokens,
        walltime_total_s=walltime_total,
        walltime_s=distribution([r.walltime_s for r in records]),
        ttft_s=distribution([t.ttft_s for t in turns]),
        tpot_s=distribution(tpots) if tpots else None,
        tokens_per_s_total=_rate(output_tokens, walltime_total),
        tokens_per_s_mean=statistics.fmean(request_tokens_per_s(r) for r in records),
        spec=spec_metrics(add_stats(turn_stats)) if turn_stats else None,
        spec_request_mean_acceptance_rate=statistics.fmean(rates) if rates else None,
        spec_request_mean_acceptance_length=statistics.fmean(lengths) if lengths else None,
    )


def summarise(
    records: Sequence[RequestRecord],
    elapsed_s: float,
    engine_counters: SpecStats | None,
) -> RunSummary:
    """Aggregate one run, overall and per category.

    ``categories`` maps each category, in name order, to the
    :func:`group_metrics` of its requests.  ``throughput_tokens_per_s`` = all
    output tokens / ``elapsed_s``, the measured run's wall clock (0.0 if it is
    zero).  ``engine_spec`` is :func:`spec_metrics` of the engine's counters, read
    as a difference around the measured run, when given.  Failed requests
    (``error`` set) are counted in ``failed_requests`` and left out of every
    aggregate.

    Raises:
        ValueError: if no request succeeded.
    """
    failed = sum(1 for r in records if r.error is not None)
    records = [r for r in records if r.error is None]
    if not records:
        raise ValueError("cannot summarise a run without requests")
    by_category: dict[str, list[RequestRecord]] = {}
    for record in records:
        by_category.setdefault(record.category, []).append(record)
    overall = group_metrics(records)
    return RunSummary(
        elapsed_s=elapsed_s,
        throughput_tokens_per_s=_rate(overall.output_tokens, elapsed_s),
        overall=overall,
        categories={name: group_metrics(by_category[name]) for name in sorted(by_category)},
        engine_spec=spec_metrics(engine_counters) if engine_counters is not None else None,
        failed_requests=failed,
    )


def speedup(candidate: float, baseline: float) -> float | None:
    """How many times faster a candidate rate is than a baseline rate: candidate / baseline.

    Both are token rates (higher is faster).  specdec reports two speedups with
    it: of ``tokens_per_s_mean`` (Spec-Bench's ratio of mean per-request token
    rates) and of ``throughput_tokens_per_s`` (ratio of total throughput).  None
    when the baseline is zero.
    """
    if baseline == 0:
        return None
    return candidate / baseline


def _accepted_per_draft(spec: SpecStats) -> list[int]:
    """Accepted draft tokens of each draft step of one turn.

    ``accepted_per_step`` in the engine's order when it lists every draft;
    otherwise rebuilt from ``acceptance_histogram`` (``histogram[j]`` steps with
    ``j`` accepted, in increasing ``j``: the order is lost, the counts are not).

    Raises:
        ValueError: if neither lists every draft (only totals were recorded).
    """
    if len(spec.accepted_per_step) == spec.num_drafts:
        return list(spec.accepted_per_step)
    if sum(spec.acceptance_histogram) == spec.num_drafts:
        return [j for j, count in enumerate(spec.acceptance_histogram) for _ in range(count)]
    raise ValueError(
        f"the turn's counts do not list its {spec.num_drafts} draft steps one by one "
        "(neither accepted_per_step nor acceptance_histogram covers them)"
    )


def spec_bench_accept_lengths(turn: TurnRecord) -> list[int]:
    """Tokens produced by each forward step of one turn, as Spec-Bench's ``accept_lengths``.

    Spec-Bench appends one entry per target-model forward pass: the tokens that
    pass added to the output, so the entries of a turn add up to its new tokens
    (the baseline writes ``[1] * new_token``; prompt lookup decoding counts its
    first, prefill, pass too).  From a turn's counts:

    - the prefill step that produced the first token: 1 (vLLM proposes no draft
      with it);
    - each verify step that carried a draft, in order: accepted + 1 (the target
      model's own token included);
    - each decode step without a draft: 1.  Their number is not recorded, so it
      is output_tokens - 1 - sum(accepted + 1 over draft steps), at least 0.

    The last step can be cut short by ``max_tokens`` or a stop, and vLLM counts
    its accepted tokens before the cut; then the tokens of the draft steps exceed
    the output, no plain step is left, and the excess is taken off the last
    entries (never below 1 per step) so that the entries add up to
    ``output_tokens``, as in Spec-Bench.  The plain steps are listed after the
    draft steps: their real place among them is unknown, which changes no mean.
    Without counts (``spec`` None, speculation off) every step gives 1 token: the
    baseline's ``[1] * output_tokens``.  No output gives no entries.

    Raises:
        ValueError: if the turn's counts do not list each draft step (neither
            ``accepted_per_step`` nor ``acceptance_histogram`` covers
            ``num_drafts``).
    """
    if turn.output_tokens <= 0:
        return []
    drafted = [] if turn.spec is None else [a + 1 for a in _accepted_per_draft(turn.spec)]
    plain = max(turn.output_tokens - 1 - sum(drafted), 0)
    lengths = [1, *drafted, *([1] * plain)]
    excess = sum(lengths) - turn.output_tokens
    for i in reversed(range(1, len(lengths))):
        if excess <= 0:
            break
        cut = min(excess, lengths[i] - 1)
        lengths[i] -= cut
        excess -= cut
    return lengths


def spec_bench_accept_totals(records: Iterable[RequestRecord]) -> tuple[int, int]:
    """Sum and number of every :func:`spec_bench_accept_lengths` entry of ``records``.

    What :func:`spec_bench_mean_accepted_tokens` divides; totals of groups add up,
    so a run folder can keep them per request.

    Raises:
        ValueError: as :func:`spec_bench_accept_lengths`.
    """
    total = count = 0
    for record in records:
        for turn in record.turns:
            lengths = spec_bench_accept_lengths(turn)
            total += sum(lengths)
            count += len(lengths)
    return total, count


def spec_bench_mean_accepted_tokens(records: Sequence[RequestRecord]) -> float | None:
    """Spec-Bench's "#Mean accepted tokens" of a group of requests.

    The mean of every :func:`spec_bench_accept_lengths` entry of every turn of
    every request, as ``evaluation/speed.py`` takes ``np.mean`` of all the
    answers' ``accept_lengths`` together.  Since a turn's entries add up to its
    output tokens, this is (barring a cut last step) all output tokens / all
    forward steps, where the prefill and steps without a draft count as steps.
    None when there are no entries (no output at all).

    Raises:
        ValueError: as :func:`spec_bench_accept_lengths`.
    """
    total, count = spec_bench_accept_totals(records)
    return total / count if count else None


def spec_bench_mean_accepted_tokens_by_category(
    totals: Iterable[tuple[str, tuple[int, int]]],
) -> tuple[dict[str, float | None], float | None]:
    """:func:`spec_bench_mean_accepted_tokens` of each category and of all.

    ``totals`` gives each request's category and :func:`spec_bench_accept_totals`.
    """
    by: dict[str, tuple[int, int]] = {}
    for category, (total, count) in totals:
        before = by.get(category, (0, 0))
        by[category] = (before[0] + total, before[1] + count)
    by_category = {c: (t / n if n else None) for c, (t, n) in by.items()}
    total = sum(t for t, _ in by.values())
    count = sum(n for _, n in by.values())
    return by_category, (total / count if count else None)


def _spec_bench_rate(records: Sequence[RequestRecord], which: str) -> float:
    """Mean over requests of output tokens / walltime (both summed over turns)."""
    if not records:
        raise ValueError(f"no {which} requests to compute a Spec-Bench speedup from")
    for record in records:
        if record.walltime_s <= 0:
            raise ValueError(
                f"{which} request {record.id!r} has no walltime; Spec-Bench's speed.py "
                "would divide by zero"
            )
    return statistics.fmean(request_tokens_per_s(r) for r in records)


def spec_bench_speedup(
    candidate: Sequence[RequestRecord], baseline: Sequence[RequestRecord]
) -> float:
    """Spec-Bench's "Speedup ratio" of a candidate run over a baseline run.

    As ``evaluation/speed.py``: each request's rate is sum(new tokens) /
    sum(wall time) over its turns (:func:`request_tokens_per_s`, with
    ``output_tokens`` and ``walltime_s``); the speedup is

        mean(candidate rates) / mean(baseline rates)

    the same as :func:`speedup` of the two groups' ``tokens_per_s_mean``.
    (speed.py counts the baseline's tokens by re-tokenizing its answer texts;
    here both sides use the engine's own ``output_tokens``.)  Filter both by
    category first for a per-category figure.

    Raises:
        ValueError: if either side has no requests, a request has no walltime, or
            the baseline generated no tokens.
    """
    candidate_rate = _spec_bench_rate(candidate, "candidate")
    baseline_rate = _spec_bench_rate(baseline, "baseline")
    if baseline_rate == 0:
        raise ValueError("the baseline generated no tokens; no Spec-Bench speedup")
    return candidate_rate / baseline_rate


@frozen
class Slo:
    """Service level objectives of a goodput figure, in milliseconds, as ``vllm bench serve``.

    The limits of ``--goodput ttft:200 tpot:50 e2el:1000`` in vLLM 0.32.0
    (``vllm/benchmarks/serve.py``, ``check_goodput_args``): time to first token,
    time per output token and end-to-end latency.  Unset limits are not checked;
    at least one must be set.  Each set limit must be a finite number above 0
    (vLLM also takes 0, which only a measurement of exactly 0 meets).
    :func:`specdec.serialization.structure` reads one from a mapping such as
    ``{"ttft_ms": 200, "tpot_ms": 50}`` (a study file's ``slo:``); ``specdec report
    --slo`` takes vLLM's spelling (:func:`specdec.concurrency.parse_slo`).
    """

    ttft_ms: float | None = field(default=None, validator=above_zero)
    tpot_ms: float | None = field(default=None, validator=above_zero)
    e2el_ms: float | None = field(default=None, validator=above_zero)

    def __attrs_post_init__(self) -> None:
        """Refuse an objective without any limit."""
        if self.ttft_ms is None and self.tpot_ms is None and self.e2el_ms is None:
            msg = "an SLO needs at least one of ttft_ms, tpot_ms and e2el_ms"
            raise InvalidOptionError(msg)


@frozen
class Goodput:
    """How many requests met an :class:`Slo`, their share and their rate."""

    good: int
    """Requests that met every limit set."""
    requests: int
    """Requests judged, failed ones included (a failed request is never good)."""
    share: float
    """good / requests."""
    rate_per_s: float
    """good / the run's duration: vLLM's ``request_goodput``, in requests per second."""


def _within(limit_ms: float | None, seconds: float) -> bool:
    # vLLM compares in seconds, limit / 1000 >= value: a value at the limit meets it.
    return limit_ms is None or limit_ms / 1000 >= seconds


def turn_meets_slo(turn: TurnRecord, slo: Slo) -> bool:
    """Whether one turn (one request to the engine) meets every limit ``slo`` sets.

    As ``calculate_metrics`` in vLLM 0.32.0's ``vllm/benchmarks/serve.py``, with
    each limit in milliseconds turned into seconds (limit / 1000) and met when
    the value is at most the limit:

    - TTFT: ``turn.ttft_s``;
    - TPOT: :func:`turn_tpot`, decode_s / (output_tokens - 1), which is vLLM's
      (latency - ttft) / (output_len - 1).  A turn of at most one output token
      has no TPOT; vLLM counts it as 0, so it meets any TPOT limit;
    - end-to-end latency: ``turn.walltime_s`` (TTFT + decode time), vLLM's
      per-request ``latency``.
    """
    tpot = turn_tpot(turn)
    return (
        _within(slo.ttft_ms, turn.ttft_s)
        and _within(slo.tpot_ms, 0.0 if tpot is None else tpot)
        and _within(slo.e2el_ms, turn.walltime_s)
    )


def meets_slo(record: RequestRecord, slo: Slo) -> bool:
    """Whether a request is good under ``slo``: it succeeded and each turn meets it.

    ``vllm bench serve`` sends single-turn requests, where this is exactly its
    test (:func:`turn_meets_slo`); a conversation of several turns is good only
    when every turn, each one request to the engine, is.  A failed request
    (``error`` set) or one without turns is never good, as vLLM counts only
    successful requests.
    """
    if record.error is not None or not record.turns:
        return False
    return all(turn_meets_slo(turn, slo) for turn in record.turns)


def goodput(records: Sequence[RequestRecord], slo: Slo, duration_s: float) -> Goodput:
    """Goodput of a run under ``slo``, as ``vllm bench serve --goodput`` defines it.

        good = number of requests that meet every limit set (:func:`meets_slo`)
        share = good / requests
        rate = good / duration_s

    ``rate`` is vLLM 0.32.0's ``request_goodput`` (``vllm/benchmarks/serve.py``:
    ``good_completed / dur_s``, the benchmark's duration); ``duration_s`` is the
    run's wall clock (a summary's ``elapsed_s``).  ``share`` counts failed
    requests among ``requests``, never among the good ones.

    Raises:
        ValueError: if ``records`` is empty or ``duration_s`` is not a finite
            number above 0.
    """
    if not records:
        raise ValueError("cannot compute the goodput of no requests")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"the run's duration must be a finite number above 0, got {duration_s}")
    good = sum(1 for record in records if meets_slo(record, slo))
    return Goodput(
        good=good,
        requests=len(records),
        share=good / len(records),
        rate_per_s=good / duration_s,
    )
