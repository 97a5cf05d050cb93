"""The lossless check: does speculation change what greedy decoding says?

Under greedy sampling, speculative decoding should reproduce the baseline's
text exactly.  In reduced precision it often does not: verifying several tokens
at once changes the arithmetic, and where the baseline's top two tokens were
nearly tied the other one can win.  So each turn is compared token by token
with the baseline's; at the first divergence the baseline's margin between its
top two log-probabilities decides: at or under the threshold it is a near-tie
flip (counted and shown), above it a real mismatch (a failure, pointing at a
bug).  Later turns of a conversation whose earlier turn diverged are not
compared, since their prompts differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

from attrs import frozen

Status = Literal["equal", "near_tie", "mismatch", "unclassified", "not_compared", "missing"]

class TurnOutput(Protocol):
    """What the check reads of one answered turn (a TurnRecord, or a run folder's columns)."""

    @property
    def output(self) -> str:
        """The answer's text (read only where the turn diverges)."""

    @property
    def output_token_ids(self) -> Sequence[int]:
        """The answer's token ids."""

    @property
    def logprob_margins(self) -> Sequence[float]:
        """Per output token, the top-2 log-probability margin (may be empty)."""


class RequestOutput(Protocol):
    """What the check reads of one request (a RequestRecord, or a run folder's columns)."""

    @property
    def id(self) -> str:
        """The request's id, shared by the runs compared."""

    @property
    def error(self) -> str | None:
        """Why the request failed, or None."""

    @property
    def turns(self) -> Sequence[TurnOutput]:
        """Its answered turns, in order."""


CONTEXT_CHARS = 24
SHOWN_CHARS = 80


@frozen
class TurnComparison:
    """How one turn of one request compares with the baseline's."""

    id: str
    turn: int
    status: Status
    position: int | None = None
    baseline_margin: float | None = None
    baseline_text: str = ""
    candidate_text: str = ""


@frozen
class LosslessResult:
    """The check of one candidate run against the baseline run.

    ``comparisons`` lists every turn that is not equal.  ``passed`` is False
    when any turn is a real mismatch or a request is missing.
    """

    threshold: float
    turns: int
    equal: int
    near_tie: int
    mismatch: int
    unclassified: int
    not_compared: int
    missing: int
    comparisons: tuple[TurnComparison, ...]

    @property
    def passed(self) -> bool:
        """No real mismatch and nothing missing."""
        return self.mismatch == 0 and self.missing == 0

    @property
    def verdict(self) -> str:
        """``pass`` or ``FAIL``, as reports show it."""
        return "pass" if self.passed else "FAIL"


def _common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items ``a`` and ``b`` share.

    A binary search over slice comparisons, which run at C speed: a long
    answer's first difference is found without a Python loop over its tokens.
    """
    if type(a) is not type(b):  # a tuple never equals a memoryview: compare as tuples
        a, b = tuple(a), tuple(b)
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    if type(a) is type(b) and a == b:  # the usual case, decided at C speed
        return None
    shared = _common_prefix(a, b)
    return None if shared == len(a) == len(b) else shared


def _excerpt(text: str, other: str) -> str:
    start = _common_prefix(text, other)
    begin = max(0, start - CONTEXT_CHARS)
    return ("..." if begin else "") + text[begin : start + SHOWN_CHARS]


def compare_turn(request_id: str, turn: int, candidate: TurnOutput, baseline: TurnOutput,
                 threshold: float) -> TurnComparison:
    """Compare one turn's output tokens with the baseline's."""
    position = _first_difference(candidate.output_token_ids, baseline.output_token_ids)
    if position is None:
        return TurnComparison(request_id, turn, "equal")
    margins = baseline.logprob_margins
    margin = margins[position] if position < len(margins) else None
    status: Status
    if margin is None:
        status = "unclassified"
    elif margin <= threshold:
        status = "near_tie"
    else:
        status = "mismatch"
    return TurnComparison(
        request_id, turn, status, position, margin,
        _excerpt(baseline.output, candidate.output), _excerpt(candidate.output, baseline.output),
    )


def check(candidate: Sequence[RequestOutput], baseline: Sequence[RequestOutput],
          threshold: float) -> LosslessResult:
    """Compare every request of ``candidate`` with the same request of ``baseline``."""
    ours = {r.id: r for r in candidate}
    results: list[TurnComparison] = []
    for request in baseline:
        mine = ours.get(request.id)
        if mine is None or mine.error is not None:
            results.append(TurnComparison(request.id, 0, "missing"))
            continue
        diverged = False
        for turn, (a, b) in enumerate(zip(mine.turns, request.turns, strict=False)):
            if diverged:
                results.append(TurnComparison(request.id, turn, "not_compared"))
                continue
            result = compare_turn(request.id, turn, a, b, threshold)
            diverged = result.status != "equal"
            results.append(result)
    counts = {s: sum(1 for r in results if r.status == s) for s in
              ("equal", "near_tie", "mismatch", "unclassified", "not_compared", "missing")}
    return LosslessResult(
        threshold=threshold,
        turns=len(results),
        comparisons=tuple(r for r in results if r.status != "equal"),
        **counts,
    )
