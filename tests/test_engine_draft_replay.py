"""Predict, then confirm: a draft model replayed from its own continuations, against the engine.

Three engine starts, no more: a greedy baseline and the bundled truncated draft at
k = 3 (``specdec-run``, the bundled model in float32, eager mode, one request at a
time), then one engine of the draft model alone in this process, which computes its
greedy continuation of 3 tokens from every prefix of the baseline's turns
(:func:`specdec.draft_replay.replay_draft_run`).  The replay of those continuations
through vLLM's verify loop must give the draft run's per-request counts exactly:
drafts, draft tokens, accepted tokens, accepted per position, the histogram and
accepted per step.

The baseline runs 8 tokens longer than the draft run, so replaying it at the draft
run's budget knows what the target said past the draft run's last token: no last
step is left unresolved unless a turn ended at EOS (then the engine's count lies
within the unresolved tokens).  ``engine.max_model_len`` is 530, so extract-04 (503
prompt tokens) is capped at 27 tokens in both runs and runs into the context
length, where vLLM stops running the drafter and drafts zeros.

Run it alone (it takes a few minutes on two cores):
``.venv/bin/pytest -q tests/test_engine_draft_replay.py``
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from specdec import run_folder
from specdec.draft_replay import DraftContinuations, replay_draft_run
from specdec.records import RequestRecord, StrategyConfig
from specdec.replay import ReplayedRun, read_known_run

from .conftest import KV_CACHE, run_arms

pytestmark = pytest.mark.engine

PROMPTS = ("code-03", "summ-05", "trans-02", "math-02", "extract-04")
MAX_TOKENS = 32
LOOKAHEAD = 8
MAX_MODEL_LEN = 530
K = 3
ENGINE = ("--set", "engine.enforce_eager=true", *KV_CACHE, "--set", "engine.dtype=float32",
          "--set", f"engine.max_model_len={MAX_MODEL_LEN}", "--mode", "sequential")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The baseline (32 + 8 tokens) and the bundled draft at k=3 (32 tokens)."""
    tmp = tmp_path_factory.mktemp("draft-replay")
    arms = {
        "none": ("--strategy", "none", "--set", f"generation.max_tokens={MAX_TOKENS + LOOKAHEAD}"),
        "draft": ("--strategy", "draft_model", "--set", f"generation.max_tokens={MAX_TOKENS}",
                  "--set", f"strategy.num_speculative_tokens={K}"),
    }
    return run_arms(tmp, PROMPTS, ENGINE, arms)


@pytest.fixture(scope="module")
def replayed(runs: dict[str, Path]) -> tuple[ReplayedRun, DraftContinuations]:
    """The baseline at the draft run's budget, replayed from the draft's continuations."""
    known = read_known_run(runs["none"], max_tokens=MAX_TOKENS)
    (run,), continuations = replay_draft_run(
        known, [StrategyConfig("draft_model", {"num_speculative_tokens": K})])
    return run, continuations


def _records(folder: Path) -> dict[str, RequestRecord]:
    return {r.id: r for r in run_folder.read_records(folder)}


def _table(rows: Sequence[tuple[object, ...]]) -> str:
    head = ("request", "drafts", "draft tok", "accepted", "per position", "histogram",
            "unresolved")
    return "\n".join(" | ".join(map(str, row)) for row in (head, *rows))


def test_the_draft_run_repeats_the_baseline(runs: dict[str, Path]) -> None:
    """Lossless in float32: every draft turn is the baseline's tokens up to its own end
    (all of them where it stopped at EOS); extract-04 was capped by the context."""
    base = _records(runs["none"])
    mine = _records(runs["draft"])
    assert mine.keys() == base.keys()
    for request_id, record in mine.items():
        assert record.error is None
        (turn,), (baseline,) = record.turns, base[request_id].turns
        assert turn.output_token_ids == baseline.output_token_ids[:turn.output_tokens]
        if turn.finish_reason == "stop":
            assert turn.output_token_ids == baseline.output_token_ids
        assert turn.spec is not None
    extract = mine["extract-04"].turns[0]
    assert extract.max_tokens == MAX_MODEL_LEN - extract.prompt_tokens


def test_replayed_counts_equal_the_engines(runs: dict[str, Path],
                                           replayed: tuple[ReplayedRun, DraftContinuations],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Per request, the replay from the draft's own continuations gives the engine's counts
    exactly: drafts, draft tokens, accepted, accepted per position, the histogram and
    accepted per step; a turn that ended at EOS may leave its last draft unresolved, and
    then the engine's accepted tokens lie within it."""
    run, continuations = replayed
    assert continuations.max_k == K
    engine = _records(runs["draft"])
    rows: list[tuple[object, ...]] = []
    problems: list[str] = []
    for request in run.requests:
        assert request.error is None
        (turn,) = request.turns
        record = next(r for r in run.records if r.id == request.id)
        theirs = engine[request.id].turns[0]
        assert record.turns[0].output_token_ids == theirs.output_token_ids, request.id
        got, want = turn.spec, theirs.spec
        assert want is not None
        rows.append((request.id, f"{got.num_drafts}/{want.num_drafts}",
                     f"{got.num_draft_tokens}/{want.num_draft_tokens}",
                     f"{got.num_accepted_tokens}/{want.num_accepted_tokens}",
                     f"{got.accepted_per_position}/{want.accepted_per_position}",
                     f"{got.acceptance_histogram}/{want.acceptance_histogram}",
                     turn.unresolved))
        if turn.unresolved == 0 and got != want:
            problems.append(f"{request.id}: replayed {got} != engine {want}")
        elif turn.unresolved and not (
                (got.num_drafts, got.num_draft_tokens) == (want.num_drafts, want.num_draft_tokens)
                and got.num_accepted_tokens <= want.num_accepted_tokens
                <= got.num_accepted_tokens + turn.unresolved):
            problems.append(f"{request.id}: engine {want} outside replayed {got} + "
                            f"{turn.unresolved} unresolved")
        if theirs.finish_reason == "length":
            assert turn.unresolved == 0, request.id
    with capsys.disabled():
        sys.stdout.write(f"\nreplayed/engine, draft_model k={K} ({continuations.requests} "
                         "continuations):\n" + _table(rows) + "\n")
    assert not problems, "\n".join(problems)
