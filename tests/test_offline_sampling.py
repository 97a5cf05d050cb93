"""What the offline engine sends vLLM, recorded by a stand-in ``vllm`` module (no engine).

A timed request carries only what the user configured: no log-probabilities
unless ``generation.logprobs`` asks; and the prompt the scoring pass rebuilds
(``prompt_token_ids``) is the one a run sends.
"""

from __future__ import annotations

import types
from typing import Any, ClassVar

import pytest

from specdec.config import load_config
from specdec.engines import vllm_offline
from specdec.engines.requests import request_seed
from specdec.interfaces import Capabilities, SampleRequest
from specdec.records import Conversation, RequestRecord


class SamplingParams:
    """Records the keyword arguments of every SamplingParams built."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        SamplingParams.made.append(kwargs)
        self.kwargs = kwargs


class Tokenizer:
    """One id per character of the messages' contents, so prompts are told apart."""

    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> list[int]:
        return [ord(c) for m in messages for c in m["content"]]

    def encode(self, text: str, **_: Any) -> list[int]:
        return [ord(c) for c in text]


class LLM:
    """Answers every prompt with two tokens; records what it was sent."""

    sent: ClassVar[list[tuple[list[dict[str, Any]], Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.llm_engine = types.SimpleNamespace(
            model_config=types.SimpleNamespace(max_model_len=4096))

    def get_tokenizer(self) -> Tokenizer:
        return Tokenizer()

    def get_metrics(self) -> list[Any]:
        return []

    def generate(self, prompts: list[dict[str, Any]], params: Any, **_: Any) -> list[Any]:
        LLM.sent.append((prompts, params))
        completion = types.SimpleNamespace(text="ok", token_ids=[5, 6], finish_reason="stop",
                                           logprobs=None, spec_decode_metrics=None)
        metrics = types.SimpleNamespace(first_token_ts=1.0, last_token_ts=1.5,
                                        first_token_latency=0.1)
        return [types.SimpleNamespace(outputs=[completion], metrics=metrics,
                                      prompt_token_ids=p.get("prompt_token_ids"))
                for p in prompts]


@pytest.fixture(autouse=True)
def _stand_in_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    SamplingParams.made = []
    LLM.sent = []
    module = types.SimpleNamespace(SamplingParams=SamplingParams, LLM=LLM)
    monkeypatch.setattr(vllm_offline, "_import_vllm", lambda: module)
    monkeypatch.setattr(vllm_offline, "capabilities",
                        lambda: Capabilities("offline", device="cpu"))


CONVERSATION = Conversation(id="c", turns=("first question", "second question"))


def _sent_kwargs() -> list[dict[str, Any]]:
    """The SamplingParams of every request sent (vLLM takes one, or one per prompt)."""
    out = []
    for prompts, params in LLM.sent:
        each = params if isinstance(params, list) else [params] * len(prompts)
        out += [p.kwargs for p in each]
    return out


def _run(overrides: list[str]) -> tuple[vllm_offline.VllmOfflineEngine, list[RequestRecord]]:
    engine = vllm_offline.VllmOfflineEngine(load_config(None, overrides), "/m", None)
    engine.start()
    records: list[RequestRecord] = []
    engine.run([CONVERSATION], records.append)
    return engine, records


def test_timed_requests_carry_no_logprobs_unless_configured() -> None:
    """Without generation.logprobs no request asks for them; with it, exactly what was set."""
    engine, records = _run([])
    timed = _sent_kwargs()
    assert len(timed) == 3  # the warm-up and both turns
    assert all("logprobs" not in kwargs and "prompt_logprobs" not in kwargs
               for kwargs in timed)
    assert "logprobs" not in engine.describe()["sampling"]
    assert records[0].turns[0].logprob_margins == ()
    LLM.sent = []
    engine, _ = _run(["generation.logprobs=2"])
    assert [kwargs["logprobs"] for kwargs in _sent_kwargs()] == [2, 2, 2]
    assert engine.describe()["sampling"]["logprobs"] == 2


def test_prompt_token_ids_are_the_prompts_a_run_sends() -> None:
    """Every turn's prompt as sent equals prompt_token_ids with the earlier answers."""
    engine, records = _run([])
    sent = [prompts[0]["prompt_token_ids"] for prompts, _ in LLM.sent[1:]]
    answers = [t.output for t in records[0].turns]
    assert sent == [list(engine.prompt_token_ids(CONVERSATION, answers[:n])) for n in (0, 1)]
    raw = vllm_offline.VllmOfflineEngine(load_config(None, ["chat_template=false"]), "/m", None)
    raw.start()
    single = Conversation(id="r", turns=("plain",))
    assert raw.prompt_token_ids(single, []) == tuple(ord(c) for c in "plain")


def test_sampled_requests_carry_their_own_seed() -> None:
    """At temperature > 0 each turn of each request gets its own seed, recorded in its turn.

    The seed is request_seed(config, id, turn): another turn or request gets
    another; a greedy run without generation.seed sends and records none.
    """
    engine, records = _run(["generation.temperature=0.7", "generation.seed=5"])
    timed = _sent_kwargs()[1:]
    expected = [request_seed(engine.config, "c", turn) for turn in (0, 1)]
    assert [kwargs["seed"] for kwargs in timed] == expected
    assert len(set(expected)) == 2
    assert [t.seed for t in records[0].turns] == expected
    assert "seed" not in engine.describe()["sampling"]
    LLM.sent = []
    engine, records = _run([])
    assert all("seed" not in kwargs for kwargs in _sent_kwargs())
    assert [t.seed for t in records[0].turns] == [None, None]


def test_sample_sends_one_request_per_seed_without_detokenizing() -> None:
    """Each seed is its own request with the prompt's ids and the sampling asked, in order."""
    engine = vllm_offline.VllmOfflineEngine(load_config(None, []), "/m", None)
    engine.start()
    LLM.sent = []
    SamplingParams.made = []
    run = engine.sample([SampleRequest((1, 2), (10, 11), 3, 0.7, 0.9, 5),
                         SampleRequest((4,), (12,), 3, 0.7)])
    assert run.samples == (((5, 6), (5, 6)), ((5, 6),))
    assert run.counters is None
    [(prompts, params)] = LLM.sent
    assert prompts == [{"prompt_token_ids": [1, 2]}] * 2 + [{"prompt_token_ids": [4]}]
    assert [p.kwargs for p in params] == [
        {"max_tokens": 3, "temperature": 0.7, "top_p": 0.9, "seed": 10, "top_k": 5,
         "detokenize": False},
        {"max_tokens": 3, "temperature": 0.7, "top_p": 0.9, "seed": 11, "top_k": 5,
         "detokenize": False},
        {"max_tokens": 3, "temperature": 0.7, "top_p": 1.0, "seed": 12, "detokenize": False},
    ]


def test_a_greedy_continuation_past_eos_asks_vllm_to_ignore_it() -> None:
    """ignore_eos (draft replay's continuations) reaches SamplingParams; off, nothing is sent."""
    engine = vllm_offline.VllmOfflineEngine(load_config(None, []), "/m", None)
    engine.start()
    LLM.sent = []
    SamplingParams.made = []
    engine.sample([SampleRequest((1, 2), (0,), 4, 0.0, ignore_eos=True)])
    [(_, params)] = LLM.sent
    assert [p.kwargs for p in params] == [
        {"max_tokens": 4, "temperature": 0.0, "top_p": 1.0, "seed": 0, "ignore_eos": True,
         "detokenize": False}]
