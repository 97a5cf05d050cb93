"""replay_with: replay's verify loop with a per-turn proposer the caller builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specdec.records import RequestRecord, StrategyConfig
from specdec.replay import Proposer, draft_lengths, replay_run, replay_with
from tests.test_replay import CharTokenizer, _ngram, _run


def test_a_callers_proposers_replay_as_replay_runs_own(tmp_path: Path) -> None:
    """The factory sees each setting's speculative_config and context length; each turn's
    proposer is asked for with the request's record and the turn's index; with ngram's
    proposer the replay is replay_run's."""
    folder = _run(tmp_path)
    settings = draft_lengths(StrategyConfig("ngram", {"prompt_lookup_min": 1,
                                                      "prompt_lookup_max": 2}), (1, 3))
    seen: list[tuple[int, int]] = []
    turns: list[tuple[str, int]] = []

    def factory(spec: Any, limit: int) -> Any:
        seen.append((spec["num_speculative_tokens"], limit))

        def turn(record: RequestRecord, index: int) -> Proposer:
            turns.append((record.id, index))
            return _ngram(1, 2, limit)
        return turn

    ours = replay_with(folder, settings, factory, tokenizer=CharTokenizer(), max_model_len=2048)
    theirs = replay_run(folder, settings, tokenizer=CharTokenizer(), max_model_len=2048)
    assert seen == [(1, 2048), (3, 2048)]
    assert turns == [("single", 0), ("double", 0), ("double", 1)] * 2
    assert [r.requests for r in ours] == [r.requests for r in theirs]
    assert [r.strategy for r in ours] == [r.strategy for r in theirs]
