"""Per-request failures and capped budgets, on both backends, without vLLM.

The offline engine gets a stand-in for ``vllm.LLM`` (vLLM is neither started
nor imported): it counts one token per word, refuses prompts holding the word
``poison`` the way vLLM refuses a request, and answers every other prompt with
as many tokens as its budget allows.  The server backend gets the stand-in
server of ``test_server_client`` (``max_model_len`` 64, prompts of 5 tokens).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, MutableMapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from specdec.config import load_config
from specdec.engines import vllm_offline
from specdec.engines.vllm_offline import VllmOfflineEngine
from specdec.records import Conversation, RequestRecord
from specdec.runner import run_experiment

from .test_server_client import StandIn

MAX_MODEL_LEN = 40
MAX_TOKENS = 8
POISON = 999


class Tokenizer:
    """One token per word (``poison`` is token 999), one more per chat message."""

    @staticmethod
    def ids(text: str) -> list[int]:
        return [POISON if word == "poison" else len(word) for word in text.split()]

    def apply_chat_template(self, messages: list[dict[str, str]], *, tokenize: bool,
                            add_generation_prompt: bool) -> list[int]:
        ids: list[int] = []
        for message in messages:
            ids += [0, *self.ids(message["content"])]
        return ids

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return self.ids(text)


class FakeLLM:
    """Answers like ``vllm.LLM.generate``; refuses a batch holding a poisoned prompt."""

    def __init__(self, *, crash: bool = False) -> None:
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(
            max_model_len=MAX_MODEL_LEN))
        self.calls: list[int] = []
        self.crash = crash

    def get_metrics(self) -> list[Any]:
        return []

    def generate(self, prompts: list[dict[str, Any]], params: Any, *,
                 use_tqdm: bool) -> list[Any]:
        self.calls.append(len(prompts))
        if self.crash:
            raise RuntimeError("engine core died")
        per_prompt = params if isinstance(params, list) else [params] * len(prompts)
        outputs = []
        for prompt, sampling in zip(prompts, per_prompt, strict=True):
            ids = prompt.get("prompt_token_ids") or Tokenizer.ids(prompt["prompt"])
            if POISON in ids:
                raise ValueError("The decoder prompt is poisoned")
            assert len(ids) < MAX_MODEL_LEN, "a prompt that does not fit was sent"
            tokens = list(range(sampling["max_tokens"]))
            completion = SimpleNamespace(text="w " * len(tokens), token_ids=tokens,
                                         finish_reason="length", logprobs=None)
            metrics = SimpleNamespace(first_token_ts=1.0, last_token_ts=2.0,
                                      first_token_latency=0.5)
            outputs.append(SimpleNamespace(outputs=[completion], metrics=metrics,
                                           prompt_token_ids=ids))
        return outputs


@pytest.fixture(autouse=True)
def _no_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampling settings stay a dict, and a refusal is a ValueError, so vLLM is not imported."""
    monkeypatch.setattr(vllm_offline, "_sampling",
                        lambda gen, max_tokens, _seed: {"max_tokens": max_tokens or gen.max_tokens})
    monkeypatch.setattr(vllm_offline, "_request_errors", lambda: (ValueError,))


def _engine(mode: str, llm: FakeLLM, *extra: str) -> VllmOfflineEngine:
    config = load_config(None, [f"mode={mode}", f"generation.max_tokens={MAX_TOKENS}", *extra])
    engine = VllmOfflineEngine(config, Path("model"), None)
    # What start() would build.
    engine._llm = llm
    engine._tokenizer = Tokenizer()
    return engine


CONVERSATIONS = [
    Conversation("fine", ("say one word",)),
    Conversation("too-long", ("word " * 45,)),
    Conversation("poisoned", ("poison here",)),
    Conversation("near-limit", ("word " * 34,)),
    Conversation("two-turns", ("first", "word " * 30)),
]


def _run(mode: str,
         llm: FakeLLM) -> tuple[dict[str, RequestRecord], list[MutableMapping[str, Any]]]:
    records: list[RequestRecord] = []
    with capture_logs() as logs:
        _engine(mode, llm).run(CONVERSATIONS, records.append)
    return {r.id: r for r in records}, logs


@pytest.mark.parametrize("mode", ["batch", "sequential"])
def test_bad_requests_fail_alone(mode: str) -> None:
    """A prompt that does not fit and one vLLM refuses fail; every other request runs."""
    records, _ = _run(mode, FakeLLM())
    assert list(records) == [c.id for c in CONVERSATIONS]
    assert records["fine"].error is None
    assert records["fine"].turns[0].output_tokens == MAX_TOKENS
    assert records["too-long"].error == (
        "prompt of 46 tokens does not fit max_model_len 40 (turn 1); raise "
        "engine.max_model_len or shorten the prompt")
    assert records["too-long"].turns == ()
    assert records["poisoned"].error == (
        "turn 1: vLLM refused the request: ValueError: The decoder prompt is poisoned")
    assert records["near-limit"].error is None


def test_a_later_turn_that_does_not_fit_keeps_the_earlier_turns() -> None:
    """The second turn (with the engine's first answer) is too long: turn 1 is kept."""
    records, _ = _run("batch", FakeLLM())
    record = records["two-turns"]
    assert record.error is not None
    assert record.error.startswith("prompt of 42 tokens does not fit max_model_len 40 (turn 2)")
    assert len(record.turns) == 1
    assert record.turns[0].output_tokens == MAX_TOKENS


def test_a_refused_batch_is_sent_again_one_by_one() -> None:
    """vLLM refusing one request of a batch costs the batch one retry, request by request."""
    llm = FakeLLM()
    _run("batch", llm)
    # Turn 1: fine, poisoned, near-limit and two-turns together (refused), then one by
    # one; turn 2 of two-turns does not fit, so nothing more is sent.
    assert llm.calls == [4, 1, 1, 1, 1]


def test_budget_is_capped_to_what_fits_and_warned_once() -> None:
    """A prompt of 35 tokens gets 5 of the 8 tokens asked; one warning counts the capped turns."""
    records, logs = _run("batch", FakeLLM())
    turn = records["near-limit"].turns[0]
    assert (turn.prompt_tokens, turn.max_tokens, turn.output_tokens) == (35, 5, 5)
    assert records["fine"].turns[0].max_tokens is None
    warnings = [e for e in logs if e["log_level"] == "warning" and "max_tokens" in e["event"]]
    assert len(warnings) == 1
    assert (warnings[0]["turns"], warnings[0]["max_model_len"]) == (1, MAX_MODEL_LEN)


def test_raw_prompts_are_measured_by_the_tokenizer() -> None:
    """Without the chat template the prompt text is tokenised; a prompt of max_model_len fails."""
    convs = [Conversation("exact", ("word " * MAX_MODEL_LEN,)),
             Conversation("one-less", ("word " * (MAX_MODEL_LEN - 1),)),
             Conversation("two-turns", ("a", "b"))]
    records: list[RequestRecord] = []
    _engine("batch", FakeLLM(), "chat_template=false").run(convs, records.append)
    errors = {r.id: r.error for r in records}
    assert errors["exact"] == (
        "prompt of 40 tokens leaves no room for an output token in max_model_len 40 (turn 1); "
        "raise engine.max_model_len or shorten the prompt")
    assert errors["one-less"] is None
    assert records[1].turns[0].max_tokens == 1
    assert errors["two-turns"] is not None
    assert "chat_template: true" in errors["two-turns"]


def test_an_engine_crash_still_ends_the_run() -> None:
    """An error that is not a request's fault is not recorded per request: it propagates."""
    with pytest.raises(RuntimeError, match="engine core died"):
        _run("batch", FakeLLM(crash=True))


@pytest.fixture
def server() -> Iterator[str]:
    """test_server_client's stand-in server on a loopback port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _server_run(url: str, tmp_path: Path, max_tokens: int) -> tuple[Any, list[Any]]:
    bench = tmp_path / "b.jsonl"
    bench.write_text('{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": "fine too"}\n')
    config = load_config(None, ["engine.backend=server", f"engine.url={url}", "sinks=[]",
                                f"benchmark.path={bench}", f"generation.max_tokens={max_tokens}"])
    with capture_logs() as logs:
        result = run_experiment(config, tmp_path / f"out-{max_tokens}")
    return result, logs


def test_server_budget_capped_by_its_max_model_len(server: str, tmp_path: Path) -> None:
    """The server gives 64 - 5 = 59 of 128 tokens asked: recorded per turn, warned once."""
    result, logs = _server_run(server, tmp_path, 128)
    assert [t.max_tokens for r in result.records for t in r.turns] == [59, 59]
    warnings = [e for e in logs if e["log_level"] == "warning" and "max_tokens" in e["event"]]
    assert len(warnings) == 1
    assert (warnings[0]["turns"], warnings[0]["max_model_len"]) == (2, 64)
    result, logs = _server_run(server, tmp_path, 59)
    assert [t.max_tokens for r in result.records for t in r.turns] == [None, None]
    assert not [e for e in logs if "max_tokens" in e["event"]]
