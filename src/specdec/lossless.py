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

The margin comes from the batch's scoring pass (:mod:`specdec.scoring`: the
baseline's own prompt and output prefilled after every timed run, read back as
:class:`ScoredMargins`) where there is one, else from the baseline's record (a
run asked for ``generation.logprobs`` itself: decode-time margins).  Each
comparison says which (``margin_source``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from attrs import field, frozen

Status = Literal["equal", "near_tie", "mismatch", "unclassified", "not_compared", "missing"]
MarginSource = Literal["scoring pass", "decode-time"]
SCORING_PASS: MarginSource = "scoring pass"  # noqa: S105 - a label, not a password
DECODE_TIME: MarginSource = "decode-time"

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
class ScoredMargin:
    """The baseline's top-2 margin at one divergence, read by the scoring pass.

    ``top_token_ids`` and ``top_logprobs`` are the baseline's two most likely
    tokens there (most likely first); ``margin`` is the difference of their
    log-probabilities.  ``candidates`` are the settings whose divergence asked
    for it.
    """

    id: str
    turn: int
    position: int
    margin: float
    top_token_ids: tuple[int, ...]
    top_logprobs: tuple[float, ...]
    candidates: tuple[str, ...] = ()


MarginKey = tuple[str, int, int]
"""(request id, turn, position in the turn's output) of a baseline's token."""


@frozen
class ScoredMargins:
    """A baseline run's margins from the scoring pass, and how they were obtained.

    ``engine`` holds the engine settings the pass ran with (the baseline's own:
    dtype, eager or compiled, ...).  ``error`` says why the pass did not finish
    (its divergences without a margin are then unclassified, with this reason).
    ``run_id`` is the baseline run scored.
    """

    run_id: str
    margins: tuple[ScoredMargin, ...] = ()
    engine: Mapping[str, Any] = field(factory=dict)
    error: str | None = None

    @property
    def lookup(self) -> dict[MarginKey, ScoredMargin]:
        """The margins by (request id, turn, position)."""
        return {(m.id, m.turn, m.position): m for m in self.margins}


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
    margin_source: MarginSource | None = None
    """Where ``baseline_margin`` came from: the scoring pass or the baseline's record."""
    reason: str | None = None
    """Why an unclassified divergence has no margin."""


SAMPLED_VERDICTS = {"pass": "pass (sampled check)", "difference": "FAIL (sampled check)",
                    "inconclusive": "inconclusive (sampled check)"}
"""How reports show each outcome of a study's sampled check (``specdec lossless``)."""


@frozen
class SampledCheckSummary:
    """A study's distributional check of a sampled setting, as the report shows it.

    Read from the check's ``lossless.json`` by :func:`specdec.study_lossless.summaries`:
    ``outcome`` (``pass``, ``difference`` or ``inconclusive``) and ``lines``, the
    verdict with its power statement as ``specdec lossless`` prints it; or
    ``error`` where the check failed.
    """

    baseline: str
    temperature: float
    control_temperature: float
    samples: int
    tokens: int
    folder: str
    prompts: int | None = None
    outcome: str | None = None
    lines: tuple[str, ...] = ()
    error: str | None = None

    @property
    def verdict(self) -> str:
        """The verdict cell: the outcome (``FAIL`` for a difference), or that the check failed."""
        if self.outcome is None:
            return "sampled (check failed)"
        return SAMPLED_VERDICTS.get(self.outcome, self.outcome)

    def notes(self) -> list[str]:
        """What the check did and found, one line each: a heading, then the verdict's lines."""
        if self.outcome is None:
            return [(f"sampled (temperature {self.temperature:g}); its distributional check "
                     f"against {self.baseline} failed: {self.error} (run the study again to "
                     f"retry; {self.folder})")]
        heading = (f"sampled (temperature {self.temperature:g}); distributional check against "
                   f"{self.baseline}: {self.outcome} ({self.samples} samples of {self.tokens} "
                   f"tokens per prompt and arm, {self.prompts} prompts, positive control at "
                   f"T={self.control_temperature:g}; {self.folder})")
        return [heading, *self.lines]


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
    scoring_engine: Mapping[str, Any] | None = None
    """The engine settings of the scoring pass whose margins were used (None: none used)."""
    sampled_temperature: float | None = None
    """Set when either run sampled (temperature above 0; the larger of the two):
    the exact comparison does not apply and was not made (:func:`not_compared_sampled`)."""
    sampled_check: SampledCheckSummary | None = None
    """A sampled pair's distributional check, where its study ran one (``lossless_check:``)."""
    synthetic: bool = False
    """The setting accepted drafts at a set rate (vLLM's ``synthetic`` rejection sampler):
    lossy by design, so nothing was compared (:func:`not_compared_synthetic`)."""

    @property
    def passed(self) -> bool:
        """No real mismatch and nothing missing.

        A sampled pair fails only on a difference its distributional check
        found (unchecked, it claims nothing either way).
        """
        if self.sampled_check is not None and self.sampled_check.outcome == "difference":
            return False
        return self.mismatch == 0 and self.missing == 0

    @property
    def verdict(self) -> str:
        """``pass`` or ``FAIL``, as reports show it.

        For a sampled pair, its distributional check's verdict, or ``sampled``
        where nothing was compared.
        """
        if self.sampled_check is not None:
            return self.sampled_check.verdict
        if self.synthetic:
            return "synthetic"
        if self.sampled_temperature is not None:
            return "sampled"
        return "pass" if self.passed else "FAIL"

    def sampled_notes(self) -> list[str]:
        """What reports say of a pair not compared token by token: its check's lines, else why.

        Empty for a pair compared exactly.
        """
        if self.sampled_check is not None:
            return self.sampled_check.notes()
        if self.synthetic:
            return [SYNTHETIC_NOTE]
        if self.sampled_temperature is not None:
            return [SAMPLED_NOTE.format(temperature=self.sampled_temperature)]
        return []


SAMPLED_NOTE = ("sampled (temperature {temperature:g}): texts differ by chance, so they are not "
                "compared token by token; `specdec lossless` tests the output distribution "
                "(docs/lossless.md)")
"""Why a sampled pair has no exact comparison, as reports say it."""


SYNTHETIC_NOTE = ("synthetic acceptance (rejection_sample_method: synthetic): vLLM accepted "
                  "drafts at the rate set, not by the target's choice, so the outputs are not "
                  "the target's and are not compared; its speedup measures the cost of "
                  "verifying k tokens at that acceptance, and it is never the best setting "
                  "(docs/methods.md)")
"""Why a synthetic-acceptance setting has no lossless check, as reports say it."""


def not_compared_synthetic(threshold: float) -> LosslessResult:
    """The result for a setting run with vLLM's ``synthetic`` rejection sampler: not compared.

    It accepts drafts at a chosen rate whatever the target would pick, so its
    outputs differ from the baseline's by design; an exact comparison would
    call it a failure.  Reports say what it is instead.
    """
    return LosslessResult(threshold=threshold, turns=0, equal=0, near_tie=0, mismatch=0,
                          unclassified=0, not_compared=0, missing=0, comparisons=(),
                          synthetic=True)


def not_compared_sampled(threshold: float, temperature: float,
                         sampled_check: SampledCheckSummary | None = None) -> LosslessResult:
    """The result for a pair of runs of which one sampled: nothing compared token by token.

    Two samples of the same distribution differ by chance, so an exact
    comparison would call every speculative run a mismatch; the
    distributional check (:mod:`specdec.sampled_lossless`, ``specdec
    lossless``) is the test for sampled runs, and ``sampled_check`` its
    result where the study ran it.
    """
    return LosslessResult(threshold=threshold, turns=0, equal=0, near_tie=0, mismatch=0,
                          unclassified=0, not_compared=0, missing=0, comparisons=(),
                          sampled_temperature=temperature, sampled_check=sampled_check)


def common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
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


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Where ``a`` and ``b`` first differ (or the shorter ends); None if they are equal."""
    if type(a) is type(b) and a == b:  # the usual case, decided at C speed
        return None
    shared = common_prefix(a, b)
    return None if shared == len(a) == len(b) else shared


def _excerpt(text: str, other: str) -> str:
    start = common_prefix(text, other)
    begin = max(0, start - CONTEXT_CHARS)
    return ("..." if begin else "") + text[begin : start + SHOWN_CHARS]


NOT_SCORED = ("the baseline has no margin here: no scoring pass scored it and its run did "
              "not ask for generation.logprobs; run the batch again to score it")


BY_TEXT = ("compared by text: a run has no token ids for this turn (a server that returns "
           "none, see provenance server.token_ids), so the divergence has no position or margin")


def _by_text(candidate: TurnOutput, baseline: TurnOutput) -> bool:
    """Whether a turn can only be compared by its text: a side that wrote text has no ids."""
    return any(not turn.output_token_ids and turn.output for turn in (candidate, baseline))


def compare_turn(request_id: str, turn: int, candidate: TurnOutput, baseline: TurnOutput,
                 threshold: float, *, scored: ScoredMargins | None = None,
                 lookup: Mapping[MarginKey, ScoredMargin] | None = None) -> TurnComparison:
    """Compare one turn's output tokens with the baseline's.

    The baseline's margin at the divergence is the scoring pass's (``lookup``,
    from ``scored``) where it has one, else the baseline record's own.
    """
    if _by_text(candidate, baseline):
        if candidate.output == baseline.output:
            return TurnComparison(request_id, turn, "equal")
        return TurnComparison(
            request_id, turn, "unclassified", None, None,
            _excerpt(baseline.output, candidate.output),
            _excerpt(candidate.output, baseline.output), None, BY_TEXT)
    position = first_difference(candidate.output_token_ids, baseline.output_token_ids)
    if position is None:
        return TurnComparison(request_id, turn, "equal")
    if scored is not None and lookup is None:
        lookup = scored.lookup
    hit = lookup.get((request_id, turn, position)) if lookup is not None else None
    margin: float | None
    source: MarginSource | None
    if hit is not None:
        margin, source = hit.margin, SCORING_PASS
    else:
        margins = baseline.logprob_margins
        margin = margins[position] if position < len(margins) else None
        source = DECODE_TIME if margin is not None else None
    status: Status
    reason = None
    if margin is None:
        status = "unclassified"
        reason = (f"the scoring pass did not finish: {scored.error}"
                  if scored is not None and scored.error else NOT_SCORED)
    elif margin <= threshold:
        status = "near_tie"
    else:
        status = "mismatch"
    return TurnComparison(
        request_id, turn, status, position, margin,
        _excerpt(baseline.output, candidate.output), _excerpt(candidate.output, baseline.output),
        source, reason,
    )


def divergences(candidate: Sequence[RequestOutput], baseline: Sequence[RequestOutput]
                ) -> list[tuple[str, int, int]]:
    """Where the check will look up a margin: (request id, turn, position) of each divergence.

    The first diverging turn of each request both runs answered (later turns
    are not compared).
    """
    ours = {r.id: r for r in candidate}
    found: list[tuple[str, int, int]] = []
    for request in baseline:
        mine = ours.get(request.id)
        if mine is None or mine.error is not None:
            continue
        for turn, (a, b) in enumerate(zip(mine.turns, request.turns, strict=False)):
            if _by_text(a, b):
                if a.output != b.output:
                    break  # a divergence without a position: nothing to score
                continue
            position = first_difference(a.output_token_ids, b.output_token_ids)
            if position is not None:
                found.append((request.id, turn, position))
                break
    return found


def check(candidate: Sequence[RequestOutput], baseline: Sequence[RequestOutput],
          threshold: float, margins: ScoredMargins | None = None) -> LosslessResult:
    """Compare every request of ``candidate`` with the same request of ``baseline``.

    ``margins`` are the baseline's scoring-pass margins (see
    :func:`specdec.run_folder.read_margins`); they are preferred over the
    baseline records' decode-time margins.
    """
    ours = {r.id: r for r in candidate}
    lookup = margins.lookup if margins is not None else None
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
            result = compare_turn(request.id, turn, a, b, threshold, scored=margins,
                                  lookup=lookup)
            diverged = result.status != "equal"
            results.append(result)
    counts = {s: sum(1 for r in results if r.status == s) for s in
              ("equal", "near_tie", "mismatch", "unclassified", "not_compared", "missing")}
    used = any(r.margin_source == SCORING_PASS for r in results)
    return LosslessResult(
        threshold=threshold,
        turns=len(results),
        comparisons=tuple(r for r in results if r.status != "equal"),
        scoring_engine=dict(margins.engine) if used and margins is not None else None,
        equal=counts["equal"], near_tie=counts["near_tie"], mismatch=counts["mismatch"],
        unclassified=counts["unclassified"], not_compared=counts["not_compared"],
        missing=counts["missing"],
    )
