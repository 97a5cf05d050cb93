"""The runner with a stand-in engine: output folders, resume, sinks (no vLLM engine started)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from specdec import registry
from specdec.config import load_config
from specdec.errors import OutputExistsError
from specdec.interfaces import EngineRun, RunInfo, ScoreRequest, ScoreResult
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
    runs: ClassVar[list[list[str]]] = []
    speed_by_tokens: ClassVar[dict[int, float]] = {}
    """Decode speed-up by num_speculative_tokens, to fake faster settings."""

    def __init__(self, config: ExperimentConfig, model: Path | str,
                 spec: Mapping[str, Any] | None) -> None:
        self.spec = spec

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"engine": "stand-in"}

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        raise NotImplementedError("the stand-in engine answers; it does not score")

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
            on_record(RequestRecord(conv.id, conv.category, turns))
        total = len(conversations) * 2
        counters = SpecStats(total, 8 * total // 2, 3 * total // 2)
        return EngineRun(1.0, counters)


@pytest.fixture(autouse=True)
def _reset_engine() -> None:
    StandInEngine.stop_after = None
    StandInEngine.runs = []
    StandInEngine.speed_by_tokens = {}


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
