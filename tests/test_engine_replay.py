"""Predict, then confirm: replayed ngram counts against the real engine's, per request.

One baseline and ngram at k = 1, 2 and 4 run on six sample prompts (one of them two
turns long) with the bundled model in float32, eager mode, one request at a time.
The baseline runs 8 tokens longer than the ngram runs, so replaying it at the ngram
runs' budget knows what the target would have said past their last token: no last
step is left unresolved unless a turn ended at EOS.  ``engine.max_model_len`` is
540, so the longest prompt (extract-04, 503 tokens) is capped at 37 tokens and runs
into the context length, where vLLM cuts drafts and then drafts zeros.

A later turn's prompt holds the earlier answer, which the baseline let run longer,
so later turns are replayed from the k=4 run instead (its own budget, the other
runs' tokens): exact where nothing is unresolved, within the unresolved bound
where something is.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from specdec import run_folder
from specdec.metrics import request_spec, spec_metrics
from specdec.records import RequestRecord, StrategyConfig
from specdec.replay import ReplayedRun, draft_lengths, replay_run

from .conftest import KV_CACHE, run_arms

pytestmark = pytest.mark.engine

PROMPTS = ("code-03", "summ-05", "trans-02", "math-02", "extract-04", "multi-01")
MAX_TOKENS = 48
LOOKAHEAD = 8
MAX_MODEL_LEN = 540
KS = (1, 2, 4)
NGRAM = {"prompt_lookup_min": 2, "prompt_lookup_max": 4}
ENGINE = ("--set", "engine.enforce_eager=true", *KV_CACHE, "--set", "engine.dtype=float32",
          "--set", f"engine.max_model_len={MAX_MODEL_LEN}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The baseline (48 + 8 tokens) and ngram at each k (48 tokens) on the same prompts."""
    tmp = tmp_path_factory.mktemp("replay")
    arms: dict[str, tuple[str, ...]] = {
        "none": ("--strategy", "none", "--set", f"generation.max_tokens={MAX_TOKENS + LOOKAHEAD}"),
    }
    for k in KS:
        arms[f"k{k}"] = ("--strategy", "ngram", "--set", f"generation.max_tokens={MAX_TOKENS}",
                         "--set", f"strategy.num_speculative_tokens={k}",
                         *(a for key, value in NGRAM.items()
                           for a in ("--set", f"strategy.{key}={value}")))
    return run_arms(tmp, PROMPTS, ENGINE, arms)


def _records(folder: Path) -> dict[str, RequestRecord]:
    return {r.id: r for r in run_folder.read_records(folder)}


def _settings() -> tuple[StrategyConfig, ...]:
    return draft_lengths(StrategyConfig("ngram", NGRAM), KS)


def _table(rows: Sequence[tuple[object, ...]]) -> str:
    head = ("k", "request", "turn", "source", "drafts", "draft tok", "accepted", "histogram",
            "unresolved")
    lines = [" | ".join(map(str, head))]
    lines += [" | ".join(map(str, row)) for row in rows]
    return "\n".join(lines)


def test_ngram_runs_repeat_the_baseline(runs: dict[str, Path]) -> None:
    """Every ngram turn is the baseline's tokens up to its own end (texts identical), and
    the two-turn request's second turn is the same at every k."""
    base = _records(runs["none"])
    for k in KS:
        mine = _records(runs[f"k{k}"])
        assert mine.keys() == base.keys()
        for request_id, record in mine.items():
            assert record.error is None
            first, baseline = record.turns[0], base[request_id].turns[0]
            assert first.output_token_ids == baseline.output_token_ids[:first.output_tokens]
            if first.finish_reason == "stop":
                assert first.output_token_ids == baseline.output_token_ids
            if len(record.turns) > 1:
                other = _records(runs["k4"])[request_id].turns[1]
                assert record.turns[1].output_token_ids == other.output_token_ids
    extract = base["extract-04"].turns[0]
    assert extract.max_tokens == MAX_MODEL_LEN - extract.prompt_tokens  # capped to fit


def _compare(replayed: ReplayedRun, engine: dict[str, RequestRecord], k: int, source: str,
             rows: list[tuple[object, ...]]) -> list[str]:
    """Each replayed turn against the engine's: equal, or within its unresolved tokens."""
    problems = []
    for request in replayed.requests:
        record = next(r for r in replayed.records if r.id == request.id)
        for index, (turn, ours) in enumerate(zip(request.turns, record.turns, strict=True)):
            theirs = engine[request.id].turns[index]
            assert ours.output_token_ids == theirs.output_token_ids, (request.id, index)
            got, want = turn.spec, theirs.spec
            assert want is not None
            rows.append((k, request.id, index + 1, source, f"{got.num_drafts}/{want.num_drafts}",
                         f"{got.num_draft_tokens}/{want.num_draft_tokens}",
                         f"{got.num_accepted_tokens}/{want.num_accepted_tokens}",
                         f"{got.acceptance_histogram}/{want.acceptance_histogram}",
                         turn.unresolved))
            if turn.unresolved == 0 and got != want:
                problems.append(f"k={k} {request.id} turn {index + 1} ({source}): "
                                f"replayed {got} != engine {want}")
            elif turn.unresolved and not (
                    got.num_drafts == want.num_drafts
                    and got.num_draft_tokens == want.num_draft_tokens
                    and got.num_accepted_tokens <= want.num_accepted_tokens
                    <= got.num_accepted_tokens + turn.unresolved):
                problems.append(f"k={k} {request.id} turn {index + 1} ({source}): engine "
                                f"{want} outside replayed {got} + {turn.unresolved} unresolved")
    return problems


def test_replayed_counts_equal_the_engines(runs: dict[str, Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Replaying the baseline at the ngram runs' budget gives each first turn's counts exactly
    (drafts, draft tokens, accepted, per position, histogram, per step); only a turn that
    ended at EOS can leave its last draft unresolved.  Later turns, replayed from the k=4
    run, are exact where nothing is unresolved.  Per-request figures are metrics.py's."""
    rows: list[tuple[object, ...]] = []
    problems: list[str] = []
    from_baseline = replay_run(runs["none"], _settings(), max_tokens=MAX_TOKENS)
    from_k4 = replay_run(runs["k4"], _settings())
    for k, ahead, later in zip(KS, from_baseline, from_k4, strict=True):
        engine = _records(runs[f"k{k}"])
        problems += _compare(ahead, engine, k, "baseline", rows)
        for request in ahead.requests:
            first = engine[request.id].turns[0]
            if first.finish_reason == "length":
                assert request.turns[0].unresolved == 0, (k, request.id)
            if request.error is not None:
                assert "turn 2 cannot be replayed" in request.error
        later_only = ReplayedRun(
            later.strategy, later.speculative_config, later.max_tokens, later.max_model_len,
            tuple(r for r in later.requests if len(r.turns) > 1),
            tuple(r for r in later.records if len(r.turns) > 1))
        problems += _compare(later_only, engine, k, "k4 run", rows)
        for record in ahead.records:
            if ahead.request(record.id).unresolved == 0 and record.error is None:
                ours, theirs = request_spec(record), request_spec(engine[record.id])
                assert ours is not None
                assert theirs is not None
                assert spec_metrics(ours) == spec_metrics(theirs)
    with capsys.disabled():
        sys.stdout.write("\nreplayed/engine per turn:\n" + _table(rows) + "\n")
    assert not problems, "\n".join(problems)
