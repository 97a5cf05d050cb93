"""Draft replay (specdec.draft_replay) with a stand-in draft model, without vLLM.

The stand-in draft "model" continues any text by copying the token three back
(period 3), so its continuations are known by hand; its engine serves them
through Engine.sample as vLLM does: greedy, stopping at EOS unless the request
says ignore_eos, never past max_model_len.  The expected counts are worked out
in each docstring: ``n`` is how many tokens the engine holds when a step starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson
import pytest

from specdec.config import load_config
from specdec.draft_replay import (
    ContinuationProposer,
    continuation_requests,
    draft_continuations,
    draft_engine_config,
    replay_draft,
    replay_draft_run,
)
from specdec.errors import ReplayError
from specdec.interfaces import EngineRun, SampleRequest, SampleRun, ScoreRequest, ScoreResult
from specdec.records import (
    Conversation,
    ExperimentConfig,
    RequestRecord,
    SpecStats,
    StrategyConfig,
    TurnRecord,
)
from specdec.replay import KnownRun, read_known_run, replay_turn

from .test_replay import CharTokenizer, _stats, _write_run

EOS = ord("$")


def period_three(context: Sequence[int]) -> int:
    """The stand-in draft's greedy next token: the one three back."""
    return int(context[-3])


class DraftEngine:
    """A stand-in engine of the draft model: Engine.sample continues by :func:`period_three`.

    ``honour_ignore_eos`` False makes it stop at EOS whatever the request says (a
    backend that drops the flag).  ``made`` records each engine's config.
    """

    made: ClassVar[list[ExperimentConfig]] = []
    asked: ClassVar[list[SampleRequest]] = []
    honour_ignore_eos: ClassVar[bool] = True

    def __init__(self, config: ExperimentConfig, model: Path | str,
                 spec: Mapping[str, Any] | None) -> None:
        assert spec is None  # the draft runs alone, no speculation
        assert str(model) == config.model
        self.config = config
        self.started = False
        DraftEngine.made.append(config)

    @classmethod
    def reset(cls) -> None:
        cls.made = []
        cls.asked = []
        cls.honour_ignore_eos = True

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.started = False

    def describe(self) -> dict[str, Any]:
        return {}

    def run(self, conversations: Sequence[Conversation],
            on_record: Callable[[RequestRecord], None]) -> EngineRun:
        raise NotImplementedError

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        raise NotImplementedError

    def prompt_token_ids(self, conversation: Conversation,
                         answers: Sequence[str]) -> tuple[int, ...]:
        raise NotImplementedError

    def sample(self, requests: Sequence[SampleRequest]) -> SampleRun:
        assert self.started
        limit = self.config.engine.max_model_len or 2048
        out = []
        for request in requests:
            assert request.temperature == 0
            assert len(request.token_ids) < limit  # vLLM refuses longer prompts
            DraftEngine.asked.append(request)
            tokens = list(request.token_ids)
            drawn: list[int] = []
            while len(drawn) < request.max_tokens and len(tokens) < limit:
                tokens.append(period_three(tokens))
                drawn.append(tokens[-1])
                stops = not (request.ignore_eos and self.honour_ignore_eos)
                if drawn[-1] == EOS and stops:
                    break
            out.append(tuple(tuple(drawn) for _ in request.seeds))
        return SampleRun(tuple(out))


@pytest.fixture(autouse=True)
def _fresh_engine() -> None:
    DraftEngine.reset()


def _ids(text: str) -> tuple[int, ...]:
    return tuple(ord(c) for c in text)


def _baseline(tmp_path: Path, turns: Mapping[str, tuple[str, str]], *settings: str) -> KnownRun:
    """A finished greedy single-turn run: per request, its prompt and answer."""
    bench = tmp_path / "bench.jsonl"
    bench.write_bytes(b"".join(orjson.dumps({"question_id": i, "category": "c", "turns": [q]})
                               + b"\n" for i, (q, _) in turns.items()))
    config = load_config(None, ["sinks=[log]", f"benchmark.path={bench}",
                                "engine.dtype=float32", "engine.enforce_eager=true", *settings])
    records = [RequestRecord(i, "c", (TurnRecord(q, a, len(q), len(a), 0.1, 0.4,
                                                 finish_reason="length",
                                                 output_token_ids=_ids(a)),))
               for i, (q, a) in turns.items()]
    folder = _write_run(tmp_path / "baseline", config, records)
    return read_known_run(folder, tokenizer=CharTokenizer())


def _draft(k: int, **options: Any) -> StrategyConfig:
    return StrategyConfig("draft_model", {"num_speculative_tokens": k, **options})


def _spec(run: Any, request_id: str = "r") -> SpecStats:
    """The replayed turn's counts, which its record carries too."""
    spec: SpecStats = run.request(request_id).turns[0].spec
    record = next(r for r in run.records if r.id == request_id)
    assert record.turns[0].spec == spec
    return spec


def test_counts_of_a_known_draft_worked_by_hand(tmp_path: Path) -> None:
    """Prompt a b c a b, output c a b d (n counts prompt and output held).  The draft copies
    the token three back: after a b c a b c it continues a b c a b ...

    k=1: n=6 drafts a (right), the step adds b; n=8 drafts c where d stands (wrong), the
    step adds d and ends the turn: 2 drafts, 1 accepted, histogram (1, 1).
    k=2: n=6 drafts a b (both right), the bonus d ends it: 1 draft, 2 accepted.
    k=3: n=6 drafts a b c, c is wrong: 1 draft of 3 tokens, 2 accepted, histogram
    (0, 0, 1, 0).  One continuation pass of 3 tokens serves every k."""
    run = _baseline(tmp_path, {"r": ("abcab", "cabd")})
    runs, continuations = replay_draft_run(run, [_draft(1), _draft(2), _draft(3)],
                                           engine_factory=DraftEngine)
    assert len(DraftEngine.made) == 1
    assert continuations.max_k == 3
    assert continuations.requests == 3  # prefixes after 1, 2 and 3 output tokens
    assert continuations.turns["r", 0][1] == _ids("abc")
    assert [_spec(r) for r in runs] == [_stats((1, 1), 2, (1, 0)), _stats((0, 0, 1), 2, (2,)),
                                        _stats((0, 0, 1, 0), 3, (2,))]
    assert [r.strategy.options["num_speculative_tokens"] for r in runs] == [1, 2, 3]
    assert all(r.exact for r in runs)


def test_replay_equals_the_loop_with_the_draft_itself(tmp_path: Path) -> None:
    """For k = 1..6 over turns where the draft is now right and now wrong, every turn's counts
    equal replay_turn's with a proposer that runs the stand-in draft on the ids it is given:
    the continuation at each prefix is the draft's own."""

    class Live:
        def propose(self, token_ids: Any, k: int) -> list[int]:
            tokens = [int(t) for t in token_ids]
            for _ in range(k):
                tokens.append(period_three(tokens))
            return tokens[-k:]

    turns = {"r": ("abcab", "cabcaxbcabcab"), "s": ("xyzxy", "zxyqzxyzq"), "t": ("aab", "a")}
    run = _baseline(tmp_path, turns)
    runs, _ = replay_draft_run(run, [_draft(k) for k in range(1, 7)],
                               engine_factory=DraftEngine)
    for k, replayed in zip(range(1, 7), runs, strict=True):
        for request_id, (prompt, answer) in turns.items():
            expected = replay_turn(_ids(prompt), _ids(answer), Live(), k, 2048).spec
            assert _spec(replayed, request_id) == expected, (k, request_id)
    assert _spec(runs[0], "r") != _spec(runs[5], "r")


def test_a_continuation_runs_past_eos(tmp_path: Path) -> None:
    """Prompt a b $ a b, output $ a b $ a (a run with ignore_eos: $ is EOS).  At n=6 the
    draft continues a b $ a, which is right through EOS: k=4 drafts once and accepts 4.
    The continuations are asked with ignore_eos; a backend that stops at EOS anyway returns
    a b $, shorter than asked, and is refused rather than counted as a miss."""
    run = _baseline(tmp_path, {"r": ("ab$ab", "$ab$a")}, "generation.ignore_eos=true")
    (replayed,), _ = replay_draft_run(run, [_draft(4)], engine_factory=DraftEngine)
    assert _spec(replayed) == _stats((0, 0, 0, 0, 1), 4, (4,))
    assert all(r.ignore_eos for r in DraftEngine.asked)
    DraftEngine.honour_ignore_eos = False
    with pytest.raises(ReplayError, match=r"stopped early .* must honour ignore_eos"):
        replay_draft_run(run, [_draft(4)], engine_factory=DraftEngine)


def test_at_the_context_limit_a_continuation_is_cut_where_nothing_is_verified(
        tmp_path: Path) -> None:
    """Prompt a b c a b, output c a b c a b c a, max_model_len 13 (the turn fills it), k=2,
    the draft always right.  n=6: 2 drafted and accepted (sequence 8); n=9: the same
    (sequence 11); n=12: 11 + 2 fits, so the drafter runs, but only 13 - 12 = 1 token can
    follow, so the continuation is cut to 1 (the engine is never asked past the context)
    and the scheduler verifies 13 - 12 - 1 = 0: not a draft.  2 drafts, 4 accepted."""
    run = _baseline(tmp_path, {"r": ("abcab", "cabcabca")}, "engine.max_model_len=13")
    (replayed,), continuations = replay_draft_run(run, [_draft(2)],
                                                  engine_factory=DraftEngine)
    assert _spec(replayed) == _stats((0, 0, 2), 4, (2, 2))
    assert continuations.turns["r", 0][7] == _ids("a")
    budgets = {len(r.token_ids): r.max_tokens for r in DraftEngine.asked}
    assert budgets[12] == 1
    assert all(n + m <= 13 for n, m in budgets.items())
    assert DraftEngine.made[0].engine.max_model_len == 13


def test_the_drafts_own_context_limit_stops_the_drafter(tmp_path: Path) -> None:
    """The run above with the draft's speculative_config max_model_len 9 (vLLM's
    effective_drafter_max_model_len).  n=6: 5 + 2 fits 9, 2 drafted and accepted
    (sequence 8).  n=9: 8 + 2 > 9, so vLLM drafts two zeros, both verified and rejected
    (sequence 11); n=10: zeros again, 13 - 10 - 1 = 2 verified, rejected; n=11: one zero
    verified, rejected; n=12: nothing verified.  4 drafts of 7 tokens, 2 accepted."""
    run = _baseline(tmp_path, {"r": ("abcab", "cabcabca")}, "engine.max_model_len=13")
    (replayed,), _ = replay_draft_run(run, [_draft(2, max_model_len=9)],
                                      engine_factory=DraftEngine)
    assert _spec(replayed) == _stats((3, 0, 1), 7, (2, 0, 0, 0))


def test_the_draft_engine_is_the_draft_alone_under_the_runs_settings(tmp_path: Path) -> None:
    """The engine runs the draft model (its folder from the speculative_config), strategy
    none, greedy, no warm-up, the run's dtype, eager mode and context length; a server the
    run did not launch serves the target and is refused."""
    run = _baseline(tmp_path, {"r": ("abcab", "cabd")}, "engine.max_model_len=64")
    replay_draft_run(run, [_draft(1, model="org/tiny-draft")], engine_factory=DraftEngine)
    [config] = DraftEngine.made
    assert config.model == "org/tiny-draft"
    assert (config.strategy.name, config.warmup, config.generation.temperature) == (
        "none", False, 0.0)
    assert (config.engine.dtype, config.engine.enforce_eager, config.engine.max_model_len) == (
        "float32", True, 64)
    served = load_config(None, ["engine.backend=server", "engine.url=http://x:8000"])
    with pytest.raises(ReplayError, match="serves the target"):
        draft_engine_config(served, {"model": "org/tiny-draft"}, 64)


def test_what_cannot_be_replayed_is_refused(tmp_path: Path) -> None:
    """Another method, a k above the continuations', another draft model, or settings of two
    draft models in one pass are refused; the proposer refuses a prefix it has none for."""
    run = _baseline(tmp_path, {"r": ("abcab", "cabd")})
    with pytest.raises(ReplayError, match="draft replay replays draft_model only"):
        replay_draft_run(run, [StrategyConfig("ngram", {"num_speculative_tokens": 2})],
                         engine_factory=DraftEngine)
    with pytest.raises(ReplayError, match="these settings differ"):
        replay_draft_run(run, [_draft(1), _draft(2, model="org/other-draft")],
                         engine_factory=DraftEngine)
    continuations = draft_continuations(run, _draft(2), 2, engine_factory=DraftEngine)
    with pytest.raises(ReplayError, match="compute them with max_k=3"):
        replay_draft(run, [_draft(3)], continuations)
    with pytest.raises(ReplayError, match="the continuations are of"):
        replay_draft(run, [_draft(1, model="org/other-draft")], continuations)
    proposer = ContinuationProposer(5, continuations.turns["r", 0])
    with pytest.raises(ReplayError, match="no continuation after 4 output tokens"):
        proposer.propose(np.zeros(9, dtype=np.int64), 1)
    keys, requests = continuation_requests(run, 2)
    assert [p for _, p in keys] == [1, 2, 3]
    assert [r.token_ids for r in requests] == [_ids("abcabc"), _ids("abcabca"),
                                                _ids("abcabcab")]
