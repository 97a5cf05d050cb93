"""EAGLE replay (specdec_train.replay): a head's drafts as vLLM's proposer makes them, replayed.

The drafts are checked against vLLM's ``propose`` written out from scratch (the
head's layer recomputed over every position it has seen, one draft at a time,
each step reading its own drafted token and output state), with tiny random
targets and heads; the verify-loop plumbing with a stand-in head forced to
draft known tokens, whose counts are worked out by hand.  Indices are positions
in prompt + output; a request holding ``n`` tokens drafts positions ``n ..``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from specdec import run_folder
from specdec.config import load_config
from specdec.errors import ReplayError
from specdec.metrics import summarise
from specdec.records import RequestRecord, SpecStats, StrategyConfig, TurnRecord
from specdec.replay import Tokens, replay_turn, replay_with

from specdec_train.replay import EagleDrafter, Table, TurnDrafts, eagle_turns, replay_eagle
from test_train_eagle import TINY, _head
from test_train_eagle3 import AUX, DEEP, _eagle3

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


def _saved_target(folder: Path, config: dict[str, Any]) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random two-layer Llama (test_train_eagle's), saved as a Hugging Face folder."""
    return _saved_target(tmp_path_factory.mktemp("tiny") / "target", TINY)


@pytest.fixture(scope="module")
def deep_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random eight-layer Llama (test_train_eagle3's): aux layers 2, 4 and 5."""
    return _saved_target(tmp_path_factory.mktemp("deep") / "target", DEEP)

MISS = -7
"""A drafted id no sequence holds: a wrong draft."""


def _layer(head: Any, ids: Sequence[int], states: Sequence[Any]) -> tuple[Any, Any]:
    """The head's layer over positions 0..len-1 at once (causal): what a KV cache holds."""
    embedded = head.embed[torch.tensor(list(ids))][None]
    x, residual = head._step_input(embedded, torch.stack(list(states))[None])
    cos, sin = head._cos_sin(torch.arange(len(ids))[None])
    attn = head.layer.self_attn
    q, k, v = attn.project(x, cos, sin)
    attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                scale=attn.scale)
    out, carried = head._step_output(head.layer.finish(residual, attended))
    return out[0], carried[0]


def _vllm_drafts(head: Any, tokens: Any, features: Any, lm_head: Any, *, row: int, steps: int,
                 carry_target: bool = False) -> list[int]:
    """vLLM's propose for a request whose last known token is ``row + 1``, from scratch.

    Step 0 at position ``row`` reads token ``row + 1`` and the target's state at
    ``row``; step s appends the token step s - 1 drafted with that step's own
    output state (``carry_target``: the target's state at that position instead,
    the mistake a replay must not make).
    """
    first = head.first_state(features)[0]
    ids = [int(t) for t in tokens[0, 1 : row + 2]]
    states = [first[j] for j in range(row + 1)]
    drafted: list[int] = []
    for _ in range(steps):
        out, carried = _layer(head, ids, states)
        drafted.append(int((out[-1] @ lm_head.T).argmax()))
        position = len(ids)
        ids.append(drafted[-1])
        states.append(first[position] if carry_target and position < first.shape[0]
                      else carried[-1])
    return drafted


def _target(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def _check_drafts(drafter: EagleDrafter, reference_features: Any, length: int = 12,
                  steps: int = 4) -> None:
    torch.manual_seed(3)
    sequence = torch.randint(0, TINY["vocab_size"], (length,))
    table = drafter.table(sequence.numpy().astype(np.int64), steps)
    assert table.shape == (steps, length - 1)
    tokens = sequence[None]
    with torch.no_grad():
        features = reference_features(tokens)
        differs = False
        for row in range(length - 1):
            expected = _vllm_drafts(drafter.head, tokens, features, drafter.lm_head, row=row,
                                    steps=steps)
            assert list(table[:, row]) == expected, row
            wrong = _vllm_drafts(drafter.head, tokens, features, drafter.lm_head, row=row,
                                 steps=steps, carry_target=True)
            differs = differs or wrong != expected
    assert differs, "carrying the target's state drafts the same: the check would not notice"


def test_eagle_drafts_are_vllms_propose(tiny_target: Path) -> None:
    """EAGLE-1: the table equals vLLM's propose at every row and depth, from the target's
    post-norm last hidden states; depth > 0 carries the head's own output, not the target's."""
    head, _ = _head(tiny_target)
    target = _target(tiny_target)
    drafter = EagleDrafter(target, head.eval(), target.lm_head.weight.detach(), ())

    def hidden(tokens: Any) -> Any:
        return target(tokens, output_hidden_states=True).hidden_states[-1]  # after the norm

    _check_drafts(drafter, hidden)


def test_eagle3_drafts_are_vllms_propose(deep_target: Path) -> None:
    """EAGLE-3: the same from fc of the residual streams after layers 2, 4 and 5, carrying
    its prenorm state."""
    head, _ = _eagle3(deep_target)
    target = _target(deep_target)
    drafter = EagleDrafter(target, head.eval(), target.lm_head.weight.detach(), AUX)

    def aux(tokens: Any) -> Any:
        states = target(tokens, output_hidden_states=True).hidden_states
        return torch.cat([states[k] for k in AUX], dim=-1)

    _check_drafts(drafter, aux)


class Forced:
    """A stand-in head forced to draft the known token at every position but ``wrong``."""

    def __init__(self, wrong: frozenset[int] = frozenset()) -> None:
        self.wrong = wrong
        self.sequences: list[tuple[int, ...]] = []

    def table(self, sequence: Tokens, steps: int) -> Table:
        self.sequences.append(tuple(int(t) for t in sequence))
        length = len(sequence)
        table = np.full((steps, length - 1), MISS, dtype=np.int64)
        for step in range(steps):
            for row in range(length - 1):
                position = row + step + 2
                if position < length and position not in self.wrong:
                    table[step, row] = sequence[position]
        return table


class CharTokenizer:
    """One id per character of the messages' contents (ord), so prompts are easy to rebuild."""

    def apply_chat_template(self, conversation: list[dict[str, str]], **_: Any) -> list[int]:
        return [ord(c) for m in conversation for c in m["content"]]

    def encode(self, text: str, **_: Any) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int], **_: Any) -> str:
        return "".join(chr(t) for t in token_ids)


QUESTIONS = {"single": ["abcab"], "double": ["abcba", "ca"]}
ANSWERS = {"single": ["cabc"], "double": ["cbaca", "bacb"]}


def _run(tmp_path: Path, max_tokens: int = 5, questions: dict[str, list[str]] = QUESTIONS,
         answers_of: dict[str, list[str]] = ANSWERS) -> Path:
    """A finished greedy baseline: "single" (5 + 4 tokens), "double" (5 + 5, then 12 + 4)."""
    bench = tmp_path / "bench.jsonl"
    bench.write_bytes(b"".join(orjson.dumps({"question_id": i, "category": "c", "turns": q})
                               + b"\n" for i, q in questions.items()))
    config = load_config(None, ["sinks=[log]", f"benchmark.path={bench}",
                                f"generation.max_tokens={max_tokens}"])
    records = []
    for request_id, asked in questions.items():
        answers = answers_of[request_id]
        turns = []
        for index, question in enumerate(asked):
            earlier = "".join(q + a for q, a in zip(asked[:index], answers, strict=False))
            answer = answers[index]
            turns.append(TurnRecord(question, answer, len(earlier + question), len(answer), 0.1,
                                    0.4, finish_reason="length",
                                    output_token_ids=tuple(ord(c) for c in answer)))
        records.append(RequestRecord(request_id, "c", tuple(turns)))
    folder = tmp_path / "baseline"
    writer = run_folder.RunWriter(folder)
    writer.claim(config)
    writer.start(config, {"test": True})
    for record in records:
        writer.append(record)
    writer.finish(summarise(records, 1.0, None), records)
    return folder


def _stats(histogram: Sequence[int], draft_tokens: int, steps: Sequence[int]) -> SpecStats:
    counts = tuple(histogram)
    return SpecStats(
        num_drafts=sum(counts), num_draft_tokens=draft_tokens,
        num_accepted_tokens=sum(j * c for j, c in enumerate(counts)),
        accepted_per_position=tuple(sum(counts[i + 1:]) for i in range(len(counts) - 1)),
        acceptance_histogram=counts, accepted_per_step=tuple(steps))


def _eagle(k: int) -> StrategyConfig:
    return StrategyConfig("eagle", {"num_speculative_tokens": k})


def test_a_forced_head_replays_to_the_counts_worked_by_hand(tmp_path: Path) -> None:
    """"single": prompt 0-4, output 5-8 (budget 5), the head wrong at index 7 only.
    k=1: n=6 drafts 6, accepted, n=8; n=8 drafts 8, accepted: histogram (0, 2).
    k=2: n=6 drafts 6 7, accepts 6, n=8; n=8 drafts 8 9, accepts 8, 9 is past the known
    tokens: (0, 2, 0), 4 draft tokens, 1 unresolved.  k=3: the same steps, (0, 2, 0, 0),
    6 draft tokens, 2 unresolved.  Each setting's table is built over the turn's ids."""
    folder = _run(tmp_path)
    forced = Forced(frozenset({7}))
    runs = replay_with(folder, [_eagle(1), _eagle(2), _eagle(3)],
                       lambda _spec, _limit: eagle_turns(forced), tokenizer=CharTokenizer())
    single = [run.request("single") for run in runs]
    assert [r.turns[0].spec for r in single] == [
        _stats((0, 2), 2, (1, 1)), _stats((0, 2, 0), 4, (1, 1)), _stats((0, 2, 0, 0), 6, (1, 1))]
    assert [r.unresolved for r in single] == [0, 1, 2]
    assert forced.sequences.count(tuple(ord(c) for c in "abcabcabc")) == 3


def test_every_turn_drafts_over_its_own_prompt(tmp_path: Path) -> None:
    """"double", k=2, the head always right.  Turn 1: 0-4 prompt, 5-9 output; n=6 accepts
    6 7, n=9; n=9 accepts 9, 10 is unknown: (0, 1, 1), 1 unresolved.  Turn 2: its prompt holds
    turn 1 (12 tokens), output 12-15; n=13 accepts 13 14, n=16: (0, 0, 1)."""
    folder = _run(tmp_path)
    forced = Forced()
    (run,) = replay_with(folder, [_eagle(2)], lambda _spec, _limit: eagle_turns(forced),
                         tokenizer=CharTokenizer())
    double = run.request("double")
    assert [t.spec for t in double.turns] == [_stats((0, 1, 1), 4, (2, 1)),
                                              _stats((0, 0, 1), 2, (2,))]
    assert [t.unresolved for t in double.turns] == [1, 0]
    assert tuple(ord(c) for c in "abcbacbacacabacb") in forced.sequences
    assert [t.spec for t in run.records[1].turns] == [t.spec for t in double.turns]


def test_a_proposer_refuses_tokens_that_are_not_its_turns() -> None:
    """Asked to draft after other ids than the turn's, the proposer says so."""
    proposer = TurnDrafts(Forced(), 2, (5, 6, 7))
    assert list(proposer.propose(np.array([1, 2, 5]), 2)) == [6, 7]
    with pytest.raises(ReplayError, match="not its turn's"):
        proposer.propose(np.array([1, 2, 9]), 2)


def _save_head(head: Any, target: Path, out: Path, kind: str) -> Path:
    from safetensors.torch import save_file

    from specdec_train.save import head_config

    out.mkdir()
    config = head_config(orjson.loads((target / "config.json").read_bytes()), kind)
    (out / "config.json").write_bytes(orjson.dumps(config))
    save_file({k: v.contiguous() for k, v in head.head_state().items()},
              str(out / "model.safetensors"))
    return out


def test_replay_eagle_loads_the_head_and_target_and_replays(tiny_target: Path,
                                                           tmp_path: Path) -> None:
    """End to end with a tiny random target and a saved head.  The answer (indices 5-12 after
    the prompt a b c a b) is the head's own first draft at every index but 8: at k=1, n=6
    accepts 6; n=8 rejects 8; n=9 accepts 9; n=11 accepts 11, n=13: histogram (1, 3).  At
    k=3 the counts are replay_turn's with vLLM's propose written out from scratch."""
    head, _ = _head(tiny_target)
    head.eval()
    saved = _save_head(head, tiny_target, tmp_path / "head", "eagle")
    target = _target(tiny_target)
    lm_head = target.lm_head.weight.detach()

    class Reference:
        def propose(self, token_ids: Tokens, k: int) -> list[int]:
            tokens = torch.tensor(np.asarray(token_ids))[None]
            with torch.no_grad():
                # The target over the tokens so far only, as the engine's steps saw them.
                features = target(tokens, output_hidden_states=True).hidden_states[-1]
                return _vllm_drafts(head, tokens, features, lm_head, row=len(token_ids) - 2,
                                    steps=k)

    ids = [ord(c) for c in "abcab"] + [ord("c")]
    while len(ids) < 13:
        drafted = Reference().propose(np.asarray(ids), 1)[0]
        ids.append((drafted + 1) % TINY["vocab_size"] if len(ids) == 8 else drafted)
    answer = "".join(chr(t) for t in ids[5:])
    folder = _run(tmp_path, 8, {"chain": ["abcab"]}, {"chain": [answer]})
    runs = replay_eagle(folder, [_eagle(1), _eagle(3)], head=saved, target=tiny_target,
                        tokenizer=CharTokenizer(), depth=3)
    assert runs[0].request("chain").turns[0].spec == _stats((1, 3), 4, (1, 0, 1, 1))
    expected = replay_turn(ids[:5], ids[5:], Reference(), 3, 2048).spec
    assert runs[1].request("chain").turns[0].spec == expected


def test_replay_eagle_refuses_other_methods_and_layouts(tiny_target: Path,
                                                       tmp_path: Path) -> None:
    """An ngram setting is replay_run's; a head folder of another layout is named."""
    folder = _run(tmp_path)
    with pytest.raises(ReplayError, match="not method 'ngram'"):
        replay_eagle(folder, [StrategyConfig("ngram", {"num_speculative_tokens": 2})],
                     target=tiny_target, tokenizer=CharTokenizer())
    head, _ = _head(tiny_target)
    saved = _save_head(head, tiny_target, tmp_path / "head", "eagle")
    with pytest.raises(ReplayError, match="layout"):
        replay_eagle(folder, [StrategyConfig("eagle3", {"num_speculative_tokens": 2})],
                     head=saved, target=tiny_target, tokenizer=CharTokenizer())
