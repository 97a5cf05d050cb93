"""Replay (specdec.replay): vLLM's drafters and verify loop over known token ids, without vLLM.

The expected counts are worked out by hand in each test's docstring: indices are
positions in prompt + output, ``n`` is how many tokens the engine holds when a
step starts, and a step verifies the draft against the tokens from index ``n``.
One test compares the ngram draft with vLLM's own function when vLLM is installed.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import orjson
import pytest

from specdec import registry, run_folder
from specdec.config import load_config
from specdec.errors import ReplayError
from specdec.metrics import request_spec, spec_metrics, summarise
from specdec.records import ExperimentConfig, RequestRecord, SpecStats, StrategyConfig, TurnRecord
from specdec.replay import (
    FILLER_TOKEN,
    Agreement,
    AgreementProposer,
    CustomClassProposer,
    NgramProposer,
    Tokens,
    draft_lengths,
    measured_agreement,
    merge_agreement,
    ngram_draft,
    proposer_for,
    replay_agreement,
    replay_run,
    replay_turn,
)

ROOT = Path(__file__).resolve().parents[1]
SUFFIX_LOOKUP_SRC = ROOT / "plugins" / "specdec-suffix-lookup" / "src"
BIG = 10_000
"""A context length no test sequence comes near."""



def _write_run(folder: Path, config: ExperimentConfig, records: list[RequestRecord]) -> Path:
    """A finished run folder holding ``records``, written as the runner writes one."""
    writer = run_folder.RunWriter(folder)
    writer.claim(config)
    writer.start(config, {"test": True})
    for record in records:
        writer.append(record)
    writer.finish(summarise(records, 1.0, None), records)
    return folder

def _ids(*values: int) -> Tokens:
    return np.array(values, dtype=np.int64)


def _ngram(low: int, high: int, max_model_len: int = BIG) -> NgramProposer:
    return NgramProposer(low, high, max_model_len)


# --- the ngram draft -------------------------------------------------------------------------


def test_no_earlier_copy_of_the_last_token_drafts_nothing() -> None:
    """4 never occurred before the end: no match of any length, no draft."""
    assert ngram_draft(_ids(1, 2, 3, 4), 4, 1, 3, BIG).tolist() == []


def test_a_match_near_the_end_drafts_up_to_the_end_of_the_text() -> None:
    """5 6 7 5 6: the 2-gram 5 6 occurred at 0-1, so the draft starts at index 2 (7 5 6);
    with k=4 it stops at the end of the text, three tokens long."""
    tokens = _ids(5, 6, 7, 5, 6)
    assert ngram_draft(tokens, 2, 2, 2, BIG).tolist() == [7, 5]
    assert ngram_draft(tokens, 4, 2, 2, BIG).tolist() == [7, 5, 6]


def test_the_longest_n_in_the_window_wins() -> None:
    """1 2 9 3 1 2 8 3 1 2: the 3-gram 3 1 2 occurred at 3-5 (followed by 8 3), the 2-gram
    1 2 first at 0-1 (followed by 9 3).  With n up to 3 the longer match is used, as vLLM
    tries the longest n first; with n up to 2 it is the 2-gram's earliest copy."""
    tokens = _ids(1, 2, 9, 3, 1, 2, 8, 3, 1, 2)
    assert ngram_draft(tokens, 2, 1, 3, BIG).tolist() == [8, 3]
    assert ngram_draft(tokens, 2, 1, 2, BIG).tolist() == [9, 3]


def test_the_earliest_copy_wins_a_tie() -> None:
    """1 2 7 1 2 8 1 2: 1 2 occurred at 0-1 and 3-4; vLLM takes the earliest (followed by 7)."""
    assert ngram_draft(_ids(1, 2, 7, 1, 2, 8, 1, 2), 2, 2, 2, BIG).tolist() == [7, 1]


def test_min_n_sets_the_shortest_match_that_drafts() -> None:
    """1 2 7 3 2: 3 2 never occurred; only the 1-gram 2 did (at 1, followed by 7 3)."""
    tokens = _ids(1, 2, 7, 3, 2)
    assert ngram_draft(tokens, 2, 2, 3, BIG).tolist() == []
    assert ngram_draft(tokens, 2, 1, 3, BIG).tolist() == [7, 3]
    assert ngram_draft(_ids(4), 2, 2, 3, BIG).tolist() == []  # fewer tokens than min_n


def test_the_draft_stops_at_the_model_length() -> None:
    """Ten tokens with a 2-gram match followed by 8 tokens: k=4 is cut to max_model_len - 10,
    and at max_model_len itself nothing is drafted."""
    tokens = _ids(1, 2, 3, 4, 5, 6, 7, 8, 1, 2)
    assert ngram_draft(tokens, 4, 2, 2, BIG).tolist() == [3, 4, 5, 6]
    assert ngram_draft(tokens, 4, 2, 2, 12).tolist() == [3, 4]
    assert ngram_draft(tokens, 4, 2, 2, 10).tolist() == []


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_ngram_draft_equals_vllms_own_function() -> None:
    """On 5,000 random short sequences over a small vocabulary (so matches abound), every
    window, k and context length: the same draft as vllm's numba function, which
    ``NgramProposer.propose`` calls unless the request is at max_model_len."""
    from vllm.v1.spec_decode.ngram_proposer import (
        _find_longest_matched_ngram_and_propose_tokens as vllm_draft,
    )

    rng = np.random.default_rng(7)
    matched = 0
    for _ in range(5000):
        tokens = rng.integers(0, int(rng.integers(1, 5)), int(rng.integers(0, 40)))
        low = int(rng.integers(1, 5))
        high = int(rng.integers(low, 7))
        k = int(rng.integers(1, 9))
        limit = int(rng.integers(max(len(tokens), 1), len(tokens) + 10))
        ours = ngram_draft(tokens.astype(np.int64), k, low, high, limit).tolist()
        theirs = ([] if len(tokens) >= limit else
                  vllm_draft(tokens.astype(np.int32), low, high, limit, k).tolist())
        assert ours == theirs, (tokens.tolist(), low, high, k, limit)
        matched += bool(theirs)
    assert matched > 1000  # the comparison covered drafts, not only empty ones


# --- one turn --------------------------------------------------------------------------------

PROMPT = (1, 2, 3, 4, 1, 2)
OUTPUT = (3, 4, 1, 2, 5, 6)
"""Indices 0-5 the prompt, 6-11 the output: 1 2 3 4 1 2 | 3 4 1 2 5 6."""


def _stats(histogram: Sequence[int], draft_tokens: int, steps: Sequence[int]) -> SpecStats:
    counts = tuple(histogram)
    return SpecStats(
        num_drafts=sum(counts), num_draft_tokens=draft_tokens,
        num_accepted_tokens=sum(j * c for j, c in enumerate(counts)),
        accepted_per_position=tuple(sum(counts[i + 1:]) for i in range(len(counts) - 1)),
        acceptance_histogram=counts, accepted_per_step=tuple(steps))


def test_a_turn_replayed_by_hand_with_k_2() -> None:
    """ngram 1..2, k=2.  The prefill samples index 6 (3), so n=7.
    Step 1: ... 2 3 occurred at 1-2, draft 4 1 (indices 3-4); true 4 1: accepted 2, n=10.
    Step 2: ... 1 2 first at 0-1, draft 3 4; true 5 6: accepted 0, n=11.
    Step 3: ... 2 5 and 5 never occurred: no draft (not counted), n=12, the end.
    2 drafts, 4 draft tokens, 2 accepted, histogram (1, 0, 1), 3 decode steps."""
    replayed = replay_turn(PROMPT, OUTPUT, _ngram(1, 2), 2, BIG)
    assert replayed.spec == _stats((1, 0, 1), 4, (2, 0))
    assert replayed.unresolved == 0
    assert replayed.decode_steps == 3


def test_the_same_turn_for_several_k() -> None:
    """k=1: 4 accepted at n=7; at n=9 (... 4 1 at 3-4) 2 accepted; n=11: nothing.
    k=4: at n=7 the draft 4 1 2 3 meets 4 1 2 5: 3 accepted, n=11; then nothing.
    Each k's first draft is the k-prefix of the longest one, as the match ignores k."""
    assert replay_turn(PROMPT, OUTPUT, _ngram(1, 2), 1, BIG).spec == _stats((0, 2), 2, (1, 1))
    assert replay_turn(PROMPT, OUTPUT, _ngram(1, 2), 4, BIG).spec == _stats(
        (0, 0, 0, 1, 0), 4, (3,))
    context = np.array(PROMPT + OUTPUT[:1], dtype=np.int64)
    longest = _ngram(1, 2).propose(context, 8)
    for k in range(1, 9):
        assert list(_ngram(1, 2).propose(context, k)) == list(longest[:k])


def test_figures_from_replayed_counts_are_metrics_own() -> None:
    """metrics.spec_metrics on the k=2 turn: rate 2/4, mean acceptance length 1 + 2/2,
    acceptance at each position 1 of 2 drafts; summarise takes the replayed records."""
    spec = replay_turn(PROMPT, OUTPUT, _ngram(1, 2), 2, BIG).spec
    figures = spec_metrics(spec)
    assert figures.acceptance_rate == 0.5
    assert figures.mean_acceptance_length == 2.0
    assert figures.acceptance_per_position == (0.5, 0.5)
    assert figures.acceptance_length_histogram == (1, 0, 1)
    turn = TurnRecord("q", "a", len(PROMPT), len(OUTPUT), 0.1, 0.5, output_token_ids=OUTPUT,
                      spec=spec)
    summary = summarise([RequestRecord("r", "c", (turn,))], 1.0, None)
    assert summary.overall.spec == figures


def test_a_draft_past_the_known_tokens_is_unresolved_and_lookahead_settles_it() -> None:
    """7 8 9 7 | 8 9 7, ngram 1..2, k=4.  n=5: 7 8 occurred at 0-1, draft 9 7 8 (to the end of
    the text); the true 9 7 are accepted and the third draft token lies past index 6, the
    last known: counted rejected, 1 unresolved.  Knowing one more output token (8) and
    replaying the same 3-token turn, it is accepted: 3 accepted, nothing unresolved."""
    alone = replay_turn((7, 8, 9, 7), (8, 9, 7), _ngram(1, 2), 4, BIG)
    assert alone.spec == _stats((0, 0, 1, 0, 0), 3, (2,))
    assert alone.unresolved == 1
    settled = replay_turn((7, 8, 9, 7), (8, 9, 7, 8), _ngram(1, 2), 4, BIG, output_tokens=3)
    assert settled.spec == _stats((0, 0, 0, 1, 0), 3, (3,))
    assert settled.unresolved == 0


def test_near_the_model_length_drafts_are_cut_then_filler() -> None:
    """1 2 3 1 2 | 3 1 2 3 1 2 3, k=4, max_model_len 12 (the turn fills it).
    The prefill's sequence (5) + 4 fits: at n=6 the draft 1 2 3 (2 3 at 1-2, to the end)
    is all accepted; that step's sequence was 6 + 3 = 9, and 9 + 4 > 12, so vLLM does not
    run the drafter: the draft is four 0s, of which the scheduler verifies
    12 - 10 - 1 = 1 (rejected).  At n=11 nothing can be scheduled.  (Had the drafter run
    at n=10 it would have drafted 2, which is right.)"""
    replayed = replay_turn((1, 2, 3, 1, 2), (3, 1, 2, 3, 1, 2, 3), _ngram(1, 2), 4, 12)
    assert replayed.spec == _stats((1, 0, 0, 1, 0), 4, (3, 0))
    assert replayed.decode_steps == 3
    assert FILLER_TOKEN == 0
    roomy = replay_turn((1, 2, 3, 1, 2), (3, 1, 2, 3, 1, 2, 3), _ngram(1, 2), 4, BIG)
    assert roomy.spec.num_accepted_tokens > replayed.spec.num_accepted_tokens


def test_budget_one_and_empty_outputs_draft_nothing() -> None:
    """The prefill's token ends a one-token turn: no decode step, zero counts of k's shape."""
    replayed = replay_turn(PROMPT, OUTPUT[:1], _ngram(1, 2), 3, BIG)
    assert replayed.spec == _stats((0, 0, 0, 0), 0, ())
    assert replayed.decode_steps == 0
    assert replay_turn(PROMPT, (), _ngram(1, 2), 3, BIG).decode_steps == 0


class Oracle:
    """Drafts the true next tokens (as far as they are known)."""

    def __init__(self, sequence: Sequence[int]) -> None:
        self.sequence = list(sequence)

    def propose(self, token_ids: Tokens, k: int) -> Sequence[int]:
        n = int(token_ids.shape[0])
        return self.sequence[n:n + k]


@pytest.mark.parametrize("k", range(1, 9))
def test_a_proposer_that_is_always_right(k: int) -> None:
    """Any Proposer plugs in.  With 20 output tokens, 19 come from decode steps of k + 1
    tokens each: ceil(19 / (k + 1)) steps, every one a draft accepting k, the last one
    what was left (at most k)."""
    prompt, output = tuple(range(100, 110)), tuple(range(20))
    replayed = replay_turn(prompt, output, Oracle(prompt + output), k, BIG)
    steps = math.ceil(19 / (k + 1))
    last = 19 - (steps - 1) * (k + 1)
    assert replayed.decode_steps == steps
    assert replayed.spec.accepted_per_step == (k,) * (steps - 1) + (min(k, last),)
    assert replayed.unresolved == 0


def test_counts_hold_together_for_every_k() -> None:
    """Random repetitive turns, k = 1..8: the histogram, per-position and per-step counts
    agree, no draft is longer than k, and the steps yield the output, overshooting the end
    by at most k tokens (the last step is counted before vLLM cuts it)."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        prompt = tuple(int(t) for t in rng.integers(0, 6, int(rng.integers(1, 30))))
        output = tuple(int(t) for t in rng.integers(0, 6, int(rng.integers(1, 40))))
        for k in range(1, 9):
            replayed = replay_turn(prompt, output, _ngram(1, 3), k, BIG)
            spec = replayed.spec
            assert sum(spec.acceptance_histogram) == spec.num_drafts == len(spec.accepted_per_step)
            assert sum(spec.accepted_per_step) == spec.num_accepted_tokens
            assert spec.accepted_per_position == tuple(
                sum(a > i for a in spec.accepted_per_step) for i in range(k))
            assert spec.num_draft_tokens <= k * spec.num_drafts
            overshoot = replayed.decode_steps + spec.num_accepted_tokens - (len(output) - 1)
            assert 0 <= overshoot <= k


def test_replay_refuses_what_cannot_be() -> None:
    """k below 1, a turn longer than the context, a budget beyond the output, a long draft."""
    with pytest.raises(ReplayError, match="at least 1"):
        replay_turn(PROMPT, OUTPUT, _ngram(1, 2), 0, BIG)
    with pytest.raises(ReplayError, match="more than max_model_len 10"):
        replay_turn(PROMPT, OUTPUT, _ngram(1, 2), 2, 10)
    with pytest.raises(ReplayError, match="0 to 6 output tokens"):
        replay_turn(PROMPT, OUTPUT, _ngram(1, 2), 2, BIG, output_tokens=7)

    class TooLong:
        def propose(self, token_ids: Tokens, k: int) -> Sequence[int]:
            return [9] * (k + 1)

    with pytest.raises(ReplayError, match="drafted 2 tokens, more than k=1"):
        replay_turn(PROMPT, OUTPUT, TooLong(), 1, BIG)


# --- proposers from a speculative_config -----------------------------------------------------


def test_proposers_come_from_vllms_method() -> None:
    """ngram with vLLM's window defaults (5 and 5; one given stands for both); custom_class
    by its class path; methods that need a model are refused with what replay predicts."""
    assert proposer_for({"method": "ngram"}, 99) == NgramProposer(5, 5, 99)
    assert proposer_for({"method": "ngram", "prompt_lookup_max": 3}, 99) == NgramProposer(3, 3, 99)
    assert proposer_for({"method": "ngram", "prompt_lookup_min": 2, "prompt_lookup_max": 4},
                        99) == NgramProposer(2, 4, 99)
    for method in ("draft_model", "eagle", "suffix"):
        with pytest.raises(ReplayError, match="predicts the ngram and custom_class methods"):
            proposer_for({"method": method}, 99)


class EchoProposer:
    """A custom_class proposer as vLLM builds it: drafts its last token k times."""

    built: ClassVar[list[Any]] = []

    def __init__(self, vllm_config: Any) -> None:
        self.k = int(vllm_config.speculative_config.num_speculative_tokens)
        EchoProposer.built.append(vllm_config)

    def load_model(self, *args: Any) -> None:
        """Nothing to load."""

    def propose(self, sampled_token_ids: list[list[int]], num_tokens_no_spec: Any,
                token_ids_cpu: Any, slot_mappings: Any = None) -> list[list[int]]:
        total = int(num_tokens_no_spec[0])
        assert sampled_token_ids == [[int(token_ids_cpu[0, total - 1])]]
        return [[int(token_ids_cpu[0, total - 1])] * self.k]


class NeedsAModel(EchoProposer):
    def load_model(self, *args: Any) -> None:
        args[0].parameters()


def test_a_custom_class_proposer_runs_as_vllm_calls_it() -> None:
    """Built once per k from a stand-in vllm_config; a proposer needing a model is refused."""
    EchoProposer.built.clear()
    proposer = CustomClassProposer({"method": "custom_class",
                                    "model": f"{__name__}.EchoProposer"}, 50)
    assert list(proposer.propose(_ids(4, 5, 6), 3)) == [6, 6, 6]
    assert list(proposer.propose(_ids(4, 5), 3)) == [5, 5, 5]
    assert len(EchoProposer.built) == 1
    assert EchoProposer.built[0].model_config.max_model_len == 50
    with pytest.raises(ReplayError, match="failed to start outside the engine"):
        CustomClassProposer({"model": f"{__name__}.NeedsAModel"}, 50).propose(_ids(1), 2)
    with pytest.raises(ReplayError, match="install its package"):
        CustomClassProposer({"model": "no_such_module.Proposer"}, 50)


@pytest.fixture
def suffix_lookup_source() -> Iterator[None]:
    """The suffix_lookup plugin importable from its source folder for one test, then gone."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(SUFFIX_LOOKUP_SRC))
        yield
    for name in [m for m in sys.modules if m.split(".")[0] == "specdec_suffix_lookup"]:
        del sys.modules[name]


@pytest.mark.usefixtures("suffix_lookup_source")
def test_the_suffix_lookup_plugins_proposer_replays() -> None:
    """The plugin's class, named in the speculative_config its strategy makes, replays
    offline without the core importing it: 1 2 3 4 5 1 2 | 3 4 9, min_match 2, k=3.
    n=8: 1 2 3 occurred at 0-2 (the longest, most recent), draft 4 5 1; true 4 9: 1 accepted,
    n=10, the end."""
    from specdec_suffix_lookup.strategy import SuffixLookupOptions, SuffixLookupStrategy

    spec = SuffixLookupStrategy().speculative_config(
        SuffixLookupOptions(num_speculative_tokens=3, min_match=2), None)  # type: ignore[arg-type]
    replayed = replay_turn((1, 2, 3, 4, 5, 1, 2), (3, 4, 9), proposer_for(spec, BIG), 3, BIG)
    assert replayed.spec == _stats((0, 1, 0, 0), 3, (1,))


# --- a run folder ----------------------------------------------------------------------------


class CharTokenizer:
    """One id per character of the messages' contents (ord), so prompts are easy to rebuild."""

    def apply_chat_template(self, conversation: list[dict[str, str]], **_: Any) -> list[int]:
        return [ord(c) for m in conversation for c in m["content"]]

    def encode(self, text: str, **_: Any) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int], **_: Any) -> str:
        return "".join(chr(t) for t in token_ids)


QUESTIONS = {"single": ["abcab"], "double": ["xyzxy", "zx"]}
ANSWERS = {"single": ["cabd"], "double": ["zxyzq", "yzxy"]}


def _turn(question: str, prompt: str, answer: str, spec: SpecStats | None = None) -> TurnRecord:
    return TurnRecord(question, answer, len(prompt), len(answer), 0.1, 0.4,
                      finish_reason="length", output_token_ids=tuple(ord(c) for c in answer),
                      spec=spec)


def _run(tmp_path: Path, max_tokens: int = 5) -> Path:
    """A greedy baseline over two conversations, the second two turns long."""
    bench = tmp_path / "bench.jsonl"
    bench.write_bytes(b"".join(orjson.dumps({"question_id": i, "category": "c", "turns": q})
                               + b"\n" for i, q in QUESTIONS.items()))
    config = load_config(None, ["sinks=[log]", f"benchmark.path={bench}",
                                f"generation.max_tokens={max_tokens}"])
    records = []
    for request_id, questions in QUESTIONS.items():
        answers = ANSWERS[request_id]
        turns = []
        for index, question in enumerate(questions):
            earlier = "".join(q + a for q, a in zip(questions[:index], answers, strict=False))
            turns.append(_turn(question, earlier + question, answers[index]))
        records.append(RequestRecord(request_id, "c", tuple(turns)))
    return _write_run(tmp_path / "baseline", config, records)


def _as_ids(text: str) -> tuple[int, ...]:
    return tuple(ord(c) for c in text)


def test_a_run_replays_for_many_k_with_multi_turn_prompts(tmp_path: Path) -> None:
    """Each turn is its own sequence; turn 2's prompt holds turn 1's answer as the engine saw
    it (x y z x y z x y z q z x).  Every turn equals replay_turn on those ids, per k, and the
    records carry them for metrics.request_spec; the options are written out in full."""
    folder = _run(tmp_path)
    settings = draft_lengths(StrategyConfig("ngram", {"prompt_lookup_min": 1,
                                                      "prompt_lookup_max": 2}), (1, 2, 4))
    runs = replay_run(folder, settings, tokenizer=CharTokenizer())
    assert [r.strategy.options["num_speculative_tokens"] for r in runs] == [1, 2, 4]
    assert runs[0].strategy.options == {"num_speculative_tokens": 1, "prompt_lookup_min": 1,
                                        "prompt_lookup_max": 2}
    sequences = {"single": [("abcab", "cabd")],
                 "double": [("xyzxy", "zxyzq"), ("xyzxyzxyzqzx", "yzxy")]}
    for run, k in zip(runs, (1, 2, 4), strict=True):
        assert run.speculative_config["num_speculative_tokens"] == k
        for record in run.records:
            expected = [replay_turn(_as_ids(p), _as_ids(o), _ngram(1, 2), k, 2048).spec
                        for p, o in sequences[record.id]]
            assert [t.spec for t in record.turns] == expected
            assert [t.spec for t in run.request(record.id).turns] == expected
            assert request_spec(record) == run.request(record.id).spec
        assert summarise(list(run.records), 1.0, None).overall.spec is not None


def test_a_smaller_budget_cuts_turns_and_refuses_later_ones(tmp_path: Path) -> None:
    """Replayed at max_tokens 3, the first turns end after 3 tokens (the rest settles the
    last draft) and the two-turn request stops: its second prompt held a 5-token answer."""
    folder = _run(tmp_path)
    (run,) = replay_run(folder, [StrategyConfig("ngram", {"num_speculative_tokens": 2,
                                                          "prompt_lookup_min": 1,
                                                          "prompt_lookup_max": 2})],
                        tokenizer=CharTokenizer(), max_tokens=3)
    single = next(r for r in run.records if r.id == "single")
    assert single.turns[0].output == "cab"
    assert single.turns[0].spec == replay_turn(_as_ids("abcab"), _as_ids("cabd"), _ngram(1, 2),
                                               2, 2048, output_tokens=3).spec
    double = run.request("double")
    assert len(double.turns) == 1
    assert double.error is not None
    assert "turn 2 cannot be replayed at max_tokens 3" in double.error
    assert summarise(list(run.records), 1.0, None).failed_requests == 1


def test_a_run_that_cannot_be_replayed_says_why(tmp_path: Path) -> None:
    """Strategies without a draft to replay, a budget above the run's, and a tokenizer that
    builds other prompts than the engine's are refused with what to do."""
    folder = _run(tmp_path)
    ngram = StrategyConfig("ngram", {"num_speculative_tokens": 2})
    with pytest.raises(ReplayError, match="does not speculate"):
        replay_run(folder, [StrategyConfig("none")], tokenizer=CharTokenizer())
    with pytest.raises(ReplayError, match="predicts the ngram and custom_class"):
        replay_run(folder, [StrategyConfig("raw", {"method": "eagle", "model": "head",
                                                   "num_speculative_tokens": 2})],
                   tokenizer=CharTokenizer())
    with pytest.raises(ReplayError, match=r"outside 1\.\.5"):
        replay_run(folder, [ngram], tokenizer=CharTokenizer(), max_tokens=6)

    class Doubled(CharTokenizer):
        def apply_chat_template(self, conversation: list[dict[str, str]], **_: Any) -> list[int]:
            return 2 * super().apply_chat_template(conversation)

    with pytest.raises(ReplayError, match="give replay the tokenizer the engine used"):
        replay_run(folder, [ngram], tokenizer=Doubled())


def test_a_sampled_run_is_refused(tmp_path: Path) -> None:
    """Replay predicts greedy runs only: sampling makes acceptance a matter of chance."""
    folder = tmp_path / "sampled"
    config = load_config(None, ["sinks=[log]", "generation.temperature=0.7"])
    writer = run_folder.RunWriter(folder)
    writer.claim(config)
    writer.start(config, {"test": True})
    writer.close()
    with pytest.raises(ReplayError, match="needs a greedy run"):
        replay_run(folder, [StrategyConfig("ngram")], tokenizer=CharTokenizer())


@pytest.mark.usefixtures("suffix_lookup_source")
def test_a_plugin_strategy_replays_by_name(tmp_path: Path) -> None:
    """suffix_lookup, registered as its package's entry point would register it, replays
    through the speculative_config it makes (custom_class and its class path)."""
    from specdec_suffix_lookup.proposer import draft_tokens
    from specdec_suffix_lookup.strategy import SuffixLookupStrategy

    registry.strategies.add("suffix_lookup", SuffixLookupStrategy, "specdec-suffix-lookup")
    folder = _run(tmp_path)
    settings = draft_lengths(StrategyConfig("suffix_lookup", {"min_match": 1}), (1, 3))
    runs = replay_run(folder, settings, tokenizer=CharTokenizer())
    assert runs[1].speculative_config["method"] == "custom_class"

    class Plugin:
        def propose(self, token_ids: Tokens, k: int) -> Sequence[int]:
            return [int(t) for t in draft_tokens(token_ids, min(k, 2048 - len(token_ids)), 1)]

    for run, k in zip(runs, (1, 3), strict=True):
        record = next(r for r in run.records if r.id == "single")
        assert record.turns[0].spec == replay_turn(_as_ids("abcab"), _as_ids("cabd"), Plugin(),
                                                   k, 2048).spec


# --- a draft model's measured agreement ------------------------------------------------------


def test_agreement_read_off_a_measured_turn_by_hand() -> None:
    """k=2, accepted per step (2, 0, 1) over a 7-token output.  Step 1 starts at output
    position 1 and accepts 2: positions 1 and 2 agreed, 3 was the bonus (unknown); step 2 at
    4 accepts 0: 4 disagreed; step 3 at 5 accepts 1: 5 agreed, 6 disagreed.  Position 0 is
    the prefill's.  Steps that do not cover the output (a step without a draft in between)
    or an engine that listed no steps give nothing.  With max_model_len 12, step 2 holds 4 +
    4 tokens, within 2k of 12, where vLLM may have drafted zeros: unknown from there on."""
    spec = _stats((1, 1, 1), 6, (2, 0, 1))
    output = tuple(range(10, 17))
    assert measured_agreement(output, spec, 2, prompt_tokens=4, max_model_len=BIG) == (
        None, True, True, None, False, True, False)
    assert measured_agreement((*output, 17, 18), spec, 2, prompt_tokens=4,
                              max_model_len=BIG) is None
    unlisted = attrs.evolve(spec, accepted_per_step=())
    assert measured_agreement(output, unlisted, 2, prompt_tokens=4, max_model_len=BIG) is None
    near = measured_agreement(output, spec, 2, prompt_tokens=4, max_model_len=12)
    assert near == (None, True, True, None, None, None, None)


def test_merged_agreement_fills_gaps_and_drops_conflicts() -> None:
    """Runs at other k know other positions; a position two runs disagree about is unknown."""
    merged, conflicts = merge_agreement([(None, True, None, False), (None, None, True, True)])
    assert merged == (None, True, True, None)
    assert conflicts == 1


def _draft_turn(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...], Agreement]:
    prompt = tuple(int(t) for t in rng.integers(1, 50, 5))
    output = tuple(int(t) for t in rng.integers(1, 50, int(rng.integers(2, 60))))
    # Agreement in runs, as a draft model copies stretches: each position keeps the last one's
    # fate with probability 0.8.
    truth: list[bool | None] = [None]
    for _ in output[1:]:
        last = truth[-1] if truth[-1] is not None else True
        truth.append(last if rng.random() < 0.8 else not last)
    return prompt, output, tuple(truth)


def test_measured_agreement_predicts_other_k_within_its_bounds() -> None:
    """A draft model whose agreement is known everywhere is the truth.  Measured at k = 1, 2
    and 4, each run's agreement is the truth where known; merged, the pessimistic and
    optimistic replays bound the truth's accepted tokens at every k, equal it where nothing
    was unknown, and drafts and draft tokens never depend on it (a draft model drafts k)."""
    rng = np.random.default_rng(11)
    exact = 0
    for _ in range(150):
        prompt, output, truth = _draft_turn(rng)
        oracle = AgreementProposer(len(prompt), output, truth)
        parts = []
        for k in (1, 2, 4):
            spec = replay_turn(prompt, output, oracle, k, BIG).spec
            bits = measured_agreement(output, spec, k, prompt_tokens=len(prompt),
                                      max_model_len=BIG)
            assert bits is not None
            assert all(b is None or b == t for b, t in zip(bits, truth, strict=True))
            parts.append(bits)
        merged, conflicts = merge_agreement(parts)
        assert conflicts == 0
        for k in range(1, 7):
            true = replay_turn(prompt, output, oracle, k, BIG).spec
            low = replay_turn(prompt, output, AgreementProposer(len(prompt), output, merged),
                              k, BIG).spec
            high = replay_turn(prompt, output,
                               AgreementProposer(len(prompt), output, merged, optimistic=True),
                               k, BIG).spec
            assert low.num_accepted_tokens <= true.num_accepted_tokens <= high.num_accepted_tokens
            if None not in merged[1:]:
                assert low == true == high
                exact += 1
    assert exact > 100


def _draft_source(tmp_path: Path, outputs: dict[str, list[str]], k: int) -> Path:
    """A finished draft-model run at ``k`` over _run's benchmark: its outputs, its counts as a
    draft that always agrees would give them (its own steps over its own text)."""
    from specdec.serialization import unstructure

    baseline = run_folder.read_config(tmp_path / "baseline")
    _, options = registry.strategy_options("draft_model", {"num_speculative_tokens": k})
    config = attrs.evolve(baseline, strategy=StrategyConfig("draft_model", unstructure(options)))
    records = []
    for request_id, questions in QUESTIONS.items():
        answers = outputs[request_id]
        turns = []
        for index, question in enumerate(questions):
            earlier = "".join(q + a for q, a in zip(questions[:index], answers, strict=False))
            prompt, output = _as_ids(earlier + question), _as_ids(answers[index])
            truth = (None,) + (True,) * (len(output) - 1)
            spec = replay_turn(prompt, output, AgreementProposer(len(prompt), output, truth),
                               k, 2048).spec
            turns.append(_turn(question, earlier + question, answers[index], spec))
        records.append(RequestRecord(request_id, "c", tuple(turns)))
    return _write_run(tmp_path / f"draft-k{k}", config, records)


def test_a_draft_model_replays_from_a_run_folder_up_to_where_its_text_differs(
        tmp_path: Path) -> None:
    """The source run at k=2 answered 'single' as the baseline did: agreement at positions 1
    and 2, position 3 a bonus (unknown).  Its first 'double' turn differs at index 2 (A for
    y): positions 0-1 keep its agreement, position 2 (it drafted its own token, not ours) is a
    disagreement, after it nothing is known; its second turn's prompt differs, so nothing.
    Each turn replays as replay_turn does with that agreement, and coverage counts the
    known positions after each turn's first: 2 of 3, 2 of 4 and 0 of 3."""
    baseline = _run(tmp_path)
    source = _draft_source(tmp_path, {"single": ["cabd"], "double": ["zxAzq", "yzxy"]}, 2)
    setting = StrategyConfig("draft_model", {"num_speculative_tokens": 1})
    (low,) = replay_agreement(baseline, [setting], [source], tokenizer=CharTokenizer())
    (high,) = replay_agreement(baseline, [setting], [source], optimistic=True,
                               tokenizer=CharTokenizer())
    expected = {("single", 0): (None, True, True, None),
                ("double", 0): (None, True, False, None, None),
                ("double", 1): (None, None, None, None)}
    prompts = {("single", 0): "abcab", ("double", 0): "xyzxy", ("double", 1): "xyzxyzxyzqzx"}
    outputs = {("single", 0): "cabd", ("double", 0): "zxyzq", ("double", 1): "yzxy"}
    for run, optimistic in ((low, False), (high, True)):
        for (request_id, index), bits in expected.items():
            prompt = _as_ids(prompts[request_id, index])
            output = _as_ids(outputs[request_id, index])
            proposer = AgreementProposer(len(prompt), output, bits, optimistic)
            record = next(r for r in run.records if r.id == request_id)
            assert record.turns[index].spec == replay_turn(prompt, output, proposer, 1,
                                                           2048).spec
    assert low.coverage == pytest.approx(4 / 10)
    assert request_spec(low.records[0]) != request_spec(high.records[0])  # 'single' position 3
    assert (low.strategy.options["num_speculative_tokens"], low.speculative_config["method"]) == (
        1, "draft_model")
    with pytest.raises(ReplayError, match="measured agreement replays draft_model only"):
        replay_agreement(baseline, [StrategyConfig("ngram", {"num_speculative_tokens": 1})],
                         [source], tokenizer=CharTokenizer())
    with pytest.raises(ReplayError, match="not draft_model with"):
        replay_agreement(baseline, [StrategyConfig("draft_model", {
            "num_speculative_tokens": 1, "model": "smollm2-135m"})], [source],
            tokenizer=CharTokenizer())
