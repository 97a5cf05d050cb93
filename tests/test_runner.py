"""The runner with a stand-in engine: output folders, resume, sinks (no vLLM engine started)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from io import StringIO
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
import structlog
import structlog.testing
from rich.console import Console

from specdec import display, registry
from specdec.config import load_config
from specdec.display import failure_lines
from specdec.errors import EngineError, OutputExistsError
from specdec.interfaces import (
    EngineRun,
    RunInfo,
    SampleRequest,
    SampleRun,
    ScoreRequest,
    ScoreResult,
)
from specdec.records import (
    Conversation,
    ExperimentConfig,
    RequestRecord,
    RunSummary,
    SpecStats,
    TurnRecord,
)
from specdec.runner import run_experiment
from specdec.testing import MemorySink

CONFIG = ["strategy.name=ngram", "benchmark.limit=5", "sinks=[json, jsonl]"]


class StandInEngine:
    """Answers each turn with a fixed record; can stop after N requests."""

    stop_after: int | None = None
    failing: ClassVar[dict[str, str]] = {}
    """Request ids to record as failed, with the reason."""
    runs: ClassVar[list[list[str]]] = []
    speed_by_tokens: ClassVar[dict[int, float]] = {}
    """Decode speed-up by num_speculative_tokens, to fake faster settings."""
    flatten_by_tokens: ClassVar[dict[int, float]] = {}
    """A temperature factor on samples by num_speculative_tokens, to fake a lossy strategy."""

    def __init__(self, config: ExperimentConfig, model: Path | str,
                 spec: Mapping[str, Any] | None) -> None:
        self.spec = spec

    @classmethod
    def reset(cls) -> None:
        """Forget every setting (class state, shared by the modules that use the stand-in)."""
        cls.stop_after = None
        cls.failing = {}
        cls.runs = []
        cls.speed_by_tokens = {}
        cls.flatten_by_tokens = {}

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"engine": "stand-in"}

    def sample(self, requests: Sequence[SampleRequest]) -> SampleRun:
        """Each seed's tokens from a fixed Zipf-like distribution at the request's temperature.

        ``random.Random(seed)`` draws them, so a seed gives the same sample every
        time; ``flatten_by_tokens`` raises the temperature of a speculative setting.
        """
        k = (self.spec or {}).get("num_speculative_tokens", 0)
        flatten = self.flatten_by_tokens.get(k, 1.0)
        samples = []
        for request in requests:
            temperature = request.temperature * flatten
            weights = [(1 / (i + 1)) ** (1 / temperature) for i in range(12)]
            samples.append(tuple(
                tuple(random.Random(seed).choices(range(12), weights, k=request.max_tokens))  # noqa: S311
                for seed in request.seeds))
        drafted = sum(len(r.seeds) for r in requests)
        counters = SpecStats(drafted, 2 * drafted, drafted) if self.spec else None
        return SampleRun(tuple(samples), counters)

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        raise NotImplementedError("the stand-in engine answers; it does not score")

    def prompt_token_ids(self, conversation: Conversation,
                         answers: Sequence[str]) -> tuple[int, ...]:
        """One id per character of the turn's text: enough to tell prompts apart."""
        return tuple(ord(c) for c in conversation.turns[len(answers)])

    def run(self, conversations: Sequence[Conversation],
            on_record: Callable[[RequestRecord], None]) -> EngineRun:
        StandInEngine.runs.append([c.id for c in conversations])
        for n, conv in enumerate(conversations):
            if self.stop_after is not None and n == self.stop_after:
                raise KeyboardInterrupt
            spec = SpecStats(2, 8, 3, (2, 1, 0, 0), (0, 1, 1, 0, 0), (1, 2))
            k = (self.spec or {}).get("num_speculative_tokens", 0)
            decode = 0.5 / self.speed_by_tokens.get(k, 1.0)
            turns = tuple(
                TurnRecord(prompt=t, output="x", prompt_tokens=10, output_tokens=6,
                           ttft_s=0.1, decode_s=decode, spec=spec)
                for t in conv.turns
            )
            if conv.id in self.failing:
                on_record(RequestRecord(conv.id, conv.category, turns[:1],
                                        error=self.failing[conv.id]))
                continue
            on_record(RequestRecord(conv.id, conv.category, turns))
        total = len(conversations) * 2
        counters = SpecStats(total, 8 * total // 2, 3 * total // 2)
        return EngineRun(1.0, counters)


@pytest.fixture(autouse=True)
def _reset_engine() -> None:
    StandInEngine.reset()


def _run(out: Path, **kwargs: Any) -> Any:
    return run_experiment(load_config(None, CONFIG), out, engine_factory=StandInEngine, **kwargs)


def test_writes_config_responses_and_metrics(tmp_path: Path) -> None:
    """A run writes its three files; metrics.json holds every request."""
    result = _run(tmp_path / "run")
    assert result.speculative_config["method"] == "ngram"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.yaml", "metrics.json", "responses.jsonl"]
    metrics = orjson.loads((tmp_path / "run" / "metrics.json").read_bytes())
    assert len(metrics["requests"]) == 5
    assert metrics["summary"]["overall"]["requests"] == 5


def test_finished_run_is_not_overwritten(tmp_path: Path) -> None:
    """A second run into a finished folder is refused; --overwrite replaces it."""
    _run(tmp_path / "run")
    with pytest.raises(OutputExistsError, match="already holds a finished run"):
        _run(tmp_path / "run")
    _run(tmp_path / "run", overwrite=True)
    lines = (tmp_path / "run" / "responses.jsonl").read_bytes().splitlines()
    assert len(lines) == 5


def test_interrupted_run_resumes(tmp_path: Path) -> None:
    """An interrupted run keeps its finished requests; --resume runs only the rest."""
    StandInEngine.stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()
    with pytest.raises(OutputExistsError, match="pass --resume"):
        _run(tmp_path / "run")
    StandInEngine.stop_after = None
    result = _run(tmp_path / "run", resume=True)
    first, second = StandInEngine.runs[0], StandInEngine.runs[-1]
    assert second == first[2:]
    assert [r.id for r in result.records] == first
    assert result.summary.resumed_requests == 2
    metrics = orjson.loads((tmp_path / "run" / "metrics.json").read_bytes())
    assert [r["id"] for r in metrics["requests"]] == first
    lines = (tmp_path / "run" / "responses.jsonl").read_bytes().splitlines()
    assert [orjson.loads(ln)["id"] for ln in lines] == first


def test_cut_last_line_is_dropped_on_resume(tmp_path: Path) -> None:
    """A responses.jsonl line cut by a crash is removed and that request runs again."""
    StandInEngine.stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run")
    responses = tmp_path / "run" / "responses.jsonl"
    responses.write_bytes(responses.read_bytes()[:-20])
    StandInEngine.stop_after = None
    result = _run(tmp_path / "run", resume=True)
    assert len(StandInEngine.runs[-1]) == 4
    assert len(result.records) == 5


def test_resume_refuses_another_configuration(tmp_path: Path) -> None:
    """Resuming with a different configuration is refused."""
    StandInEngine.stop_after = 1
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run")
    config = load_config(None, [*CONFIG, "generation.max_tokens=7"])
    with pytest.raises(OutputExistsError, match="different configuration"):
        run_experiment(config, tmp_path / "run", engine_factory=StandInEngine, resume=True)


class FailingSink(MemorySink):
    name = "failing"

    def record(self, record: RequestRecord) -> None:
        raise OSError("disk full")


def test_failing_sink_does_not_lose_others(tmp_path: Path) -> None:
    """One sink failing is reported; the other sinks still get everything."""
    memory, failing = MemorySink(), FailingSink()
    result = _run(tmp_path / "run", extra_sinks=[failing, memory])
    assert result.sink_errors == ("sink 'failing' failed in record: OSError: disk full",)
    assert len(memory.records) == 5
    assert memory.summary == result.summary
    assert (tmp_path / "run" / "metrics.json").exists()


def test_plugin_sink_selected_by_name(tmp_path: Path) -> None:
    """A sink registered as a plugin is chosen by name in the config."""
    seen: list[RunSummary | None] = []

    class Recorder(MemorySink):
        name = "recorder"

        def open(self, run: RunInfo) -> None:
            assert run.config.strategy.name == "ngram"

        def close(self, summary: RunSummary | None) -> None:
            seen.append(summary)

    registry.sinks.add("recorder", Recorder)
    config = load_config(None, [*CONFIG, "sinks=[recorder]"])
    run_experiment(config, tmp_path / "run", engine_factory=StandInEngine)
    assert seen[0] is not None
    assert seen[0].overall.requests == 5


TOO_LONG = ("prompt of 2301 tokens does not fit max_model_len 2048 (turn 1); raise "
            "engine.max_model_len or shorten the prompt")


def _metrics_ids(folder: Path) -> tuple[list[str], list[str | None]]:
    metrics = orjson.loads((folder / "metrics.json").read_bytes())
    return [r["id"] for r in metrics["requests"]], [r["error"] for r in metrics["requests"]]


def test_failed_requests_are_counted_and_metrics_written(tmp_path: Path) -> None:
    """A run with failed requests finishes: metrics.json holds them, the summary counts them."""
    StandInEngine.failing = {"code-02": TOO_LONG, "code-04": TOO_LONG}
    result = _run(tmp_path / "run")
    assert result.summary.failed_requests == 2
    assert result.summary.overall.requests == 3
    ids, errors = _metrics_ids(tmp_path / "run")
    assert ids == ["code-01", "code-02", "code-03", "code-04", "code-05"]
    assert errors == [None, TOO_LONG, None, TOO_LONG, None]
    metrics = orjson.loads((tmp_path / "run" / "metrics.json").read_bytes())
    assert metrics["summary"]["failed_requests"] == 2
    assert metrics["summary"]["overall"]["requests"] == 3


def test_log_sink_says_which_requests_failed(tmp_path: Path) -> None:
    """The log shows a failed request as a warning with its error, and the run's count."""
    StandInEngine.failing = {"code-02": TOO_LONG}
    config = load_config(None, [*CONFIG, "sinks=[log]"])
    with structlog.testing.capture_logs() as logged:
        run_experiment(config, tmp_path / "run", engine_factory=StandInEngine)
    failed = [e for e in logged if e["event"] == "request failed"]
    assert [(e["id"], e["error"], e["log_level"]) for e in failed] == [
        ("code-02", TOO_LONG, "warning")]
    assert not [e for e in logged if e["event"] == "request finished" and e["id"] == "code-02"]
    finished = next(e for e in logged if e["event"] == "run finished")
    assert finished["failed_requests"] == 1


def test_every_request_failed_is_an_error(tmp_path: Path) -> None:
    """A run whose every request failed has nothing to summarise: no metrics.json."""
    StandInEngine.failing = dict.fromkeys(
        ["code-01", "code-02", "code-03", "code-04", "code-05"], TOO_LONG)
    with pytest.raises(EngineError, match="all 5 requests failed; the first: prompt of 2301"):
        _run(tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert (tmp_path / "run" / "outcome.json").exists()


def test_resume_keeps_failed_requests_unless_retried(tmp_path: Path) -> None:
    """An interrupted run's failed request is kept on resume; retry_failed runs it again."""
    StandInEngine.failing = {"code-01": TOO_LONG}
    StandInEngine.stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run")
    StandInEngine.stop_after = None
    result = _run(tmp_path / "run", resume=True)
    assert StandInEngine.runs[-1] == ["code-03", "code-04", "code-05"]
    assert result.summary.failed_requests == 1
    assert [r.error for r in result.records][:1] == [TOO_LONG]


def test_finished_run_with_failures_resumes_only_with_retry(tmp_path: Path) -> None:
    """--resume on a run that finished with failures is refused without retry_failed.

    With it, only the failed requests run again; their new records replace the
    failed ones in metrics.json and the summary.
    """
    StandInEngine.failing = {"code-02": TOO_LONG, "code-05": "turn 1: vLLM refused"}
    _run(tmp_path / "run")
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    with pytest.raises(OutputExistsError, match=r"2 of 5 requests failed.*--retry-failed"):
        _run(tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before
    assert len(StandInEngine.runs) == 1
    StandInEngine.failing = {"code-05": "turn 1: vLLM refused"}
    result = _run(tmp_path / "run", resume=True, retry_failed=True)
    assert StandInEngine.runs[-1] == ["code-02", "code-05"]
    assert result.summary.failed_requests == 1
    assert result.summary.resumed_requests == 3
    assert [r.id for r in result.records] == ["code-01", "code-03", "code-04", "code-02",
                                              "code-05"]
    ids, errors = _metrics_ids(tmp_path / "run")
    assert ids == ["code-01", "code-03", "code-04", "code-02", "code-05"]
    assert errors == [None, None, None, None, "turn 1: vLLM refused"]


def test_retry_refuses_another_configuration(tmp_path: Path) -> None:
    """Retrying with a different configuration is refused and the finished run is untouched."""
    StandInEngine.failing = {"code-02": TOO_LONG}
    _run(tmp_path / "run")
    config = load_config(None, [*CONFIG, "generation.max_tokens=7"])
    with pytest.raises(OutputExistsError, match="different configuration"):
        run_experiment(config, tmp_path / "run", engine_factory=StandInEngine, resume=True,
                       retry_failed=True)
    assert (tmp_path / "run" / "metrics.json").exists()


def test_finished_run_without_failures_is_not_reopened(tmp_path: Path) -> None:
    """retry_failed on a run with nothing failed is refused like any finished run."""
    _run(tmp_path / "run")
    with pytest.raises(OutputExistsError, match="already holds a finished run"):
        _run(tmp_path / "run", resume=True, retry_failed=True)


def test_failure_lines_group_reasons_and_wrap() -> None:
    """Identical reasons are grouped with their ids; lines fit 80 columns and break at spaces."""
    records = [RequestRecord("q1", "a", ())]
    records += [RequestRecord(f"q{n}", "a", (), error=TOO_LONG) for n in (3, 4, 5, 6, 7)]
    records.append(RequestRecord("q9", "a", (), error="turn 2: HTTP 500: [internal] boom"))
    lines = failure_lines(records, 8, 80)
    assert lines[0] == "6 of 8 requests failed:"
    assert all(len(line) <= 80 for line in lines)
    text = " ".join(line.strip() for line in lines)
    assert f"- 5: {TOO_LONG} (ids q3, q4, q5, +2 more)" in text
    assert "- 1: turn 2: HTTP 500: [internal] boom (id q9)" in text
    assert lines[-1] == "The figures above count only the 2 requests that succeeded."
    one = failure_lines(records[:3], 3, 80)
    assert " ".join(line.strip() for line in one).startswith(
        f"2 of 3 requests failed: {TOO_LONG} (ids q3, q4)")
    assert failure_lines(records[:1], 1, 80) == []


def test_summary_table_says_what_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The printed summary names the failures under the table, within 80 columns."""
    StandInEngine.failing = {"code-03": TOO_LONG}
    result = _run(tmp_path / "run")
    out = StringIO()
    monkeypatch.setattr(display, "stdout", Console(file=out, width=80))
    display.print_summary(result)
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    text = " ".join(line.strip() for line in lines)
    assert f"1 of 5 requests failed: {TOO_LONG} (id code-03)" in text
    assert "The figures above count only the 4 requests that succeeded." in text
