"""The sqlite sink on synthetic records (no engine): tables, durability, resume, errors."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from specdec import load_config, run_experiment
from specdec.interfaces import EngineRun, RunInfo
from specdec.metrics import summarise
from specdec.records import (
    Conversation,
    ExperimentConfig,
    RequestRecord,
    SpecStats,
    StrategyConfig,
    TurnRecord,
)
from specdec.registry import SINK, Registry

from specdec_sqlite_sink.sink import DEFAULT_FILE_NAME, ENV_PATH, SqliteSink, database_path

CONFIG = ExperimentConfig(
    strategy=StrategyConfig("ngram", {"num_speculative_tokens": 3}), sinks=("sqlite",)
)
PROVENANCE = {
    "specdec": "0.1.0",
    "vllm": "0.32.0",
    "git_revision": None,
    "started_at": "2025-01-01T00:00:00+00:00",
    "speculative_config": {"method": "ngram", "num_speculative_tokens": 3},
}


def _turn(text: str, tokens: int, accepted: int) -> TurnRecord:
    return TurnRecord(
        prompt=f"prompt for {text}", output=text, prompt_tokens=10, output_tokens=tokens,
        ttft_s=0.1, decode_s=0.01 * tokens, finish_reason="length",
        output_token_ids=tuple(range(tokens)),
        spec=SpecStats(num_drafts=2, num_draft_tokens=6, num_accepted_tokens=accepted),
    )


RECORDS = (
    RequestRecord("q1", "code", (_turn("first", 8, 3), _turn("second", 5, 1))),
    RequestRecord("q2", "math", (_turn("third", 7, 2),)),
)
SUMMARY = summarise(
    RECORDS, 2.5, SpecStats(num_drafts=6, num_draft_tokens=18, num_accepted_tokens=6)
)


@pytest.fixture(autouse=True)
def _no_configured_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_PATH, raising=False)


@pytest.fixture
def db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "db" / "runs.sqlite"
    monkeypatch.setenv(ENV_PATH, str(path))
    return path


def _query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql, args).fetchall()


def _run(output_dir: Path, resumed: tuple[RequestRecord, ...] = ()) -> RunInfo:
    output_dir.mkdir(parents=True, exist_ok=True)
    return RunInfo(output_dir, CONFIG, PROVENANCE, resumed)


@pytest.fixture
def finished(tmp_path: Path, db_path: Path) -> Path:
    """One whole run written through the sink."""
    sink = SqliteSink()
    sink.open(_run(tmp_path / "run"))
    for record in RECORDS:
        sink.record(record)
    sink.close(SUMMARY)
    return db_path


def test_runs_row_has_the_summary_figures(finished: Path, tmp_path: Path) -> None:
    """One finished run with its identity and headline figures in columns."""
    rows = _query(finished, "SELECT output_dir, strategy, model, status, requests, "
                            "output_tokens, throughput_tokens_per_s, tokens_per_s_mean, "
                            "acceptance_rate, mean_acceptance_length, vllm_version FROM runs")
    assert len(rows) == 1
    engine = SUMMARY.engine_spec
    assert engine is not None
    assert rows[0] == (
        str((tmp_path / "run").resolve()), "ngram", "smollm2-135m", "finished", 2, 20,
        SUMMARY.throughput_tokens_per_s, SUMMARY.overall.tokens_per_s_mean,
        engine.acceptance_rate, engine.mean_acceptance_length, "0.32.0",
    )


def test_json_columns_hold_config_provenance_and_summary(finished: Path) -> None:
    """config, provenance, summary and strategy options are JSON that SQLite can query."""
    ((options, spec, summary, provenance),) = _query(
        finished, "SELECT strategy_options, speculative_config, summary, provenance FROM runs"
    )
    assert json.loads(options) == {"num_speculative_tokens": 3}
    assert json.loads(spec)["method"] == "ngram"
    assert json.loads(summary)["overall"]["output_tokens"] == 20
    assert json.loads(provenance)["specdec"] == "0.1.0"
    ((method,),) = _query(finished,
                          "SELECT json_extract(config, '$.strategy.name') FROM runs")
    assert method == "ngram"


def test_requests_have_one_row_per_turn(finished: Path) -> None:
    """Each turn is a row with its times, counts and token ids."""
    rows = _query(finished, "SELECT request_id, category, turn_index, output, output_tokens, "
                            "walltime_s, num_accepted_tokens, output_token_ids "
                            "FROM requests ORDER BY request_id, turn_index")
    assert [r[:5] for r in rows] == [
        ("q1", "code", 0, "first", 8), ("q1", "code", 1, "second", 5),
        ("q2", "math", 0, "third", 7),
    ]
    assert rows[0][5] == pytest.approx(0.1 + 0.08)
    assert [r[6] for r in rows] == [3, 1, 2]
    assert json.loads(rows[2][7]) == list(range(7))


def test_plain_sql_sums_match_the_summary(finished: Path) -> None:
    """Totals from SQL equal the run's summary."""
    ((run_id,),) = _query(finished, "SELECT run_id FROM runs")
    ((tokens, accepted),) = _query(
        finished, "SELECT SUM(output_tokens), SUM(num_accepted_tokens) FROM requests "
                  "WHERE run_id = ?", run_id)
    assert tokens == SUMMARY.overall.output_tokens
    assert SUMMARY.overall.spec is not None
    assert accepted == SUMMARY.overall.spec.num_accepted_tokens
    totals = _query(finished, "SELECT request_id, turns, output_tokens FROM request_totals "
                              "ORDER BY request_id")
    assert totals == [("q1", 2, 13), ("q2", 1, 7)]


def test_each_request_is_committed_as_it_finishes(tmp_path: Path, db_path: Path) -> None:
    """Another connection sees a request before the run closes (a crash loses nothing)."""
    sink = SqliteSink()
    sink.open(_run(tmp_path / "run"))
    sink.record(RECORDS[0])
    assert _query(db_path, "SELECT COUNT(*), MIN(request_id) FROM requests") == [(2, "q1")]
    assert _query(db_path, "SELECT status FROM runs") == [("running",)]
    sink.close(None)
    assert _query(db_path, "SELECT status FROM runs") == [("failed",)]


def test_resumed_run_continues_its_row(tmp_path: Path, db_path: Path) -> None:
    """An interrupted run, resumed, ends as one finished row with every request."""
    first = SqliteSink()
    first.open(_run(tmp_path / "run"))
    first.record(RECORDS[0])
    first.close(None)
    second = SqliteSink()
    second.open(_run(tmp_path / "run", resumed=(RECORDS[0],)))
    second.record(RECORDS[1])
    second.close(SUMMARY)
    assert second.run_id == first.run_id
    assert _query(db_path, "SELECT status, output_tokens FROM runs") == [("finished", 20)]
    assert _query(db_path, "SELECT COUNT(*) FROM requests") == [(3,)]


def test_resumed_run_missing_from_the_database_is_added(tmp_path: Path, db_path: Path) -> None:
    """Resuming into a fresh database writes the earlier requests too."""
    sink = SqliteSink()
    sink.open(_run(tmp_path / "run", resumed=(RECORDS[0],)))
    sink.record(RECORDS[1])
    sink.close(SUMMARY)
    assert _query(db_path, "SELECT COUNT(*) FROM requests") == [(3,)]


def test_many_runs_collect_in_one_database(tmp_path: Path, db_path: Path) -> None:
    """Two runs, two rows, each with its own requests."""
    for name in ("a", "b"):
        sink = SqliteSink()
        sink.open(_run(tmp_path / name))
        sink.record(RECORDS[1])
        sink.close(SUMMARY)
    rows = _query(db_path, "SELECT runs.output_dir, COUNT(requests.request_id) FROM runs "
                           "JOIN requests USING (run_id) GROUP BY runs.run_id ORDER BY 1")
    assert [(Path(d).name, n) for d, n in rows] == [("a", 1), ("b", 1)]


def test_default_path_is_beside_the_output_folder(tmp_path: Path) -> None:
    """Without SPECDEC_SQLITE_PATH, runs under one folder share its specdec.sqlite."""
    assert database_path(tmp_path / "results" / "run-1") == (
        tmp_path.resolve() / "results" / DEFAULT_FILE_NAME
    )
    sink = SqliteSink()
    sink.open(_run(tmp_path / "results" / "run-1"))
    sink.close(None)
    assert (tmp_path / "results" / DEFAULT_FILE_NAME).is_file()


def test_record_before_open_says_what_is_wrong() -> None:
    """Using the sink out of order is a clear error."""
    with pytest.raises(RuntimeError, match="not opened"):
        SqliteSink().record(RECORDS[0])
    SqliteSink().close(None)


def test_database_of_another_version_is_refused(tmp_path: Path, db_path: Path) -> None:
    """A file written by an incompatible release is not mixed into."""
    db_path.parent.mkdir(parents=True)
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('database_version', '99')")
    with pytest.raises(RuntimeError, match="version 99") as caught:
        SqliteSink().open(_run(tmp_path / "run"))
    assert ENV_PATH in str(caught.value)


def test_registry_accepts_it() -> None:
    """The registry's interface and API-version checks pass."""
    sinks = Registry(SINK, source=lambda _group: [])
    sinks.add("sqlite", SqliteSink)
    assert isinstance(sinks.create("sqlite"), SqliteSink)


class StandInEngine:
    """Answers every turn at once with fixed counts: the runner without vLLM."""

    def __init__(self, config: ExperimentConfig, model: Path | str,
                 spec: Mapping[str, Any] | None) -> None:
        self.spec = spec

    def start(self) -> None:
        """Nothing to start."""

    def close(self) -> None:
        """Nothing to release."""

    def describe(self) -> dict[str, Any]:
        """What the run's provenance records of this engine."""
        return {"engine": "stand-in"}

    def sample(self, requests: Sequence[Any]) -> Any:
        """Not needed by a run."""
        raise NotImplementedError

    def score(self, requests: Sequence[Any]) -> list[Any]:
        """Not needed by a run."""
        raise NotImplementedError

    def run(self, conversations: Sequence[Conversation],
            on_record: Callable[[RequestRecord], None]) -> EngineRun:
        for conversation in conversations:
            turns = tuple(_turn(f"answer to {t}", 4, 2) for t in conversation.turns)
            on_record(RequestRecord(conversation.id, conversation.category, turns))
        return EngineRun(1.0, SpecStats(num_drafts=2, num_draft_tokens=6, num_accepted_tokens=2))


def test_sink_in_a_run_of_the_real_runner(tmp_path: Path, db_path: Path) -> None:
    """specdec's runner drives the sink through open, record and close."""
    config = load_config(None, ["strategy.name=ngram", "benchmark.limit=3", "sinks=[json]"])
    result = run_experiment(config, tmp_path / "run", engine_factory=StandInEngine,
                            extra_sinks=[SqliteSink()])
    assert result.sink_errors == ()
    assert _query(db_path, "SELECT strategy, status, requests FROM runs") == [
        ("ngram", "finished", 3)
    ]
    ((tokens,),) = _query(db_path, "SELECT SUM(output_tokens) FROM requests")
    assert tokens == result.summary.overall.output_tokens
