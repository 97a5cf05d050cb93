"""One bad request among good ones on the real offline engine (eager, max_model_len 256).

One engine runs once: three normal prompts, one too long for ``max_model_len`` and
one that leaves less room than ``generation.max_tokens``.  The run finishes; the
resume tests read what it wrote and start no second engine (a retry is given a
recording stand-in, since what is retried is the runner's choice).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs
from transformers import AutoTokenizer

from specdec import models
from specdec.config import load_config
from specdec.errors import OutputExistsError
from specdec.interfaces import EngineRun, SampleRequest, SampleRun, ScoreRequest, ScoreResult
from specdec.records import Conversation, ExperimentConfig, RequestRecord
from specdec.runner import RunResult, run_experiment

from .conftest import KV_CACHE

pytestmark = pytest.mark.engine

MAX_MODEL_LEN = 256
MAX_TOKENS = 8
ROOM = 3
"""Output tokens left by the near-limit prompt: fewer than MAX_TOKENS."""

Run = tuple[RunResult, list[MutableMapping[str, Any]]]
"""The finished run and the log lines it wrote."""


def _chat_length(tokenizer: Any, text: str) -> int:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                        add_generation_prompt=True)
    return len(ids["input_ids"] if isinstance(ids, Mapping) else ids)


def _near_limit(tokenizer: Any) -> str:
    """A prompt whose chat-template ids leave exactly ROOM tokens in MAX_MODEL_LEN."""
    for n in range(1, MAX_MODEL_LEN):
        text = "apple " * n
        if _chat_length(tokenizer, text) == MAX_MODEL_LEN - ROOM:
            return text
    pytest.fail("no prompt of 'apple ' repeated has the wanted length")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The finished run (batch mode) and the log lines it wrote."""
    base = tmp_path_factory.mktemp("failures")
    tokenizer = AutoTokenizer.from_pretrained(models.prepare(models.BASE_ALIAS))
    prompts = [
        {"id": "ok-1", "prompt": "Name a colour."},
        {"id": "too-long", "prompt": "banana " * 400},
        {"id": "ok-2", "prompt": "Say a number."},
        {"id": "near-limit", "prompt": _near_limit(tokenizer)},
        {"id": "ok-3", "prompt": "Name a fruit."},
    ]
    bench = base / "bench.jsonl"
    bench.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in prompts))
    with capture_logs() as logs:
        result = run_experiment(_config(bench), base / "run")
    return result, logs


def _config(bench: Path) -> ExperimentConfig:
    return load_config(None, [
        f"benchmark.path={bench}", "mode=batch", "sinks=[]",
        "engine.enforce_eager=true", KV_CACHE[1],
        f"engine.max_model_len={MAX_MODEL_LEN}",
        f"generation.max_tokens={MAX_TOKENS}",
    ])


def test_over_long_prompt_fails_alone(run: Run) -> None:
    """The over-long prompt is recorded failed with its figures; the others answered."""
    result, _ = run
    by_id = {r.id: r for r in result.records}
    assert set(by_id) == {"ok-1", "too-long", "ok-2", "near-limit", "ok-3"}
    error = by_id["too-long"].error
    assert error is not None
    assert f"does not fit max_model_len {MAX_MODEL_LEN} (turn 1)" in error
    assert "raise engine.max_model_len or shorten the prompt" in error
    assert by_id["too-long"].turns == ()
    for name in ("ok-1", "ok-2", "ok-3", "near-limit"):
        assert by_id[name].error is None, by_id[name].error
        assert by_id[name].turns[0].output_tokens > 0
    assert result.summary.failed_requests == 1
    assert result.summary.overall.requests == 4
    metrics = orjson.loads((result.output_dir / "metrics.json").read_bytes())
    assert metrics["summary"]["failed_requests"] == 1
    assert [r["error"] is not None for r in metrics["requests"]].count(True) == 1


def test_budget_is_capped_to_fit_and_warned_once(run: Run) -> None:
    """The near-limit prompt gets the room left, recorded in max_tokens; one warning says so."""
    result, logs = run
    by_id = {r.id: r for r in result.records}
    turn = by_id["near-limit"].turns[0]
    assert turn.prompt_tokens == MAX_MODEL_LEN - ROOM
    assert turn.max_tokens == ROOM
    assert turn.output_tokens <= ROOM
    assert by_id["ok-1"].turns[0].max_tokens is None
    warnings = [e for e in logs if "max_tokens was cut" in e["event"]]
    assert len(warnings) == 1
    assert warnings[0]["turns"] == 1
    assert warnings[0]["max_model_len"] == MAX_MODEL_LEN


class Recorder:
    """Records what a retry asks for and answers it without vLLM."""

    asked: list[list[str]] = []  # noqa: RUF012 - shared by every instance, on purpose

    def __init__(self, config: ExperimentConfig, model: Path | str,
                 spec: Mapping[str, Any] | None) -> None:
        return None

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"engine": "recorder"}

    def sample(self, requests: Sequence[SampleRequest]) -> SampleRun:
        raise NotImplementedError

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        raise NotImplementedError

    def prompt_token_ids(self, conversation: Conversation,
                         answers: Sequence[str]) -> tuple[int, ...]:
        raise NotImplementedError

    def run(self, conversations: Sequence[Conversation],
            on_record: Callable[[RequestRecord], None]) -> EngineRun:
        Recorder.asked.append([c.id for c in conversations])
        for conv in conversations:
            on_record(RequestRecord(conv.id, conv.category, (), error="still too long"))
        return EngineRun(1.0, None)


def test_resume_does_not_retry_unless_asked(run: Run) -> None:
    """--resume leaves the failed request alone; with retry_failed only it runs again."""
    result, _ = run
    bench = Path(result.config.benchmark.path or "")
    with pytest.raises(OutputExistsError, match=r"1 of 5 requests failed.*--retry-failed"):
        run_experiment(_config(bench), result.output_dir, resume=True, engine_factory=Recorder)
    assert Recorder.asked == []
    retried = run_experiment(_config(bench), result.output_dir, resume=True, retry_failed=True,
                             engine_factory=Recorder)
    assert Recorder.asked == [["too-long"]]
    assert retried.summary.failed_requests == 1
    assert retried.summary.resumed_requests == 4
    assert [r.id for r in retried.records][-1] == "too-long"
    assert retried.records[-1].error == "still too long"
