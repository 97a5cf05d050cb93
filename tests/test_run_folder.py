"""The run folder: what a run writes, how it is read back, resumed, repaired and reported."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest
import yaml
from structlog.testing import capture_logs

from specdec import run_folder
from specdec.config import load_config
from specdec.errors import SpecdecError
from specdec.metrics import summarise
from specdec.records import RequestRecord, SpecStats, TurnRecord
from specdec.report import build_report
from specdec.runner import run_experiment
from specdec.serialization import unstructure
from specdec.study import _item_error
from tests.test_runner import StandInEngine

LOG_ONLY = ["strategy.name=ngram", "benchmark.limit=5", "sinks=[log]"]


@pytest.fixture(autouse=True)
def _reset_engine() -> None:
    StandInEngine.reset()


def _run(out: Path, overrides: list[str] = LOG_ONLY, **kwargs: object) -> object:
    return run_experiment(load_config(None, overrides), out, engine_factory=StandInEngine,
                          **kwargs)  # type: ignore[arg-type]


def test_log_sink_alone_still_writes_the_record(tmp_path: Path) -> None:
    """--sinks log chooses observers only: the run folder is written whatever the sinks."""
    _run(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.yaml", "metrics.json", "responses.jsonl"]
    assert len(run_folder.read_records(tmp_path / "run")) == 5
    assert run_folder.read_summary(tmp_path / "run").overall.requests == 5


def test_lines_identify_their_run_without_repeating_provenance(tmp_path: Path) -> None:
    """Each line carries schema version and run id; provenance is in config.yaml once."""
    _run(tmp_path / "run")
    lines = [orjson.loads(x) for x in (tmp_path / "run" / "responses.jsonl").read_bytes()
             .splitlines()]
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    run_id = config["provenance"]["run_id"]
    assert len(run_id) == 32
    assert all(line["run_id"] == run_id and line["schema_version"] == 1 for line in lines)
    assert not any("provenance" in line for line in lines)
    metrics = orjson.loads((tmp_path / "run" / "metrics.json").read_bytes())
    assert metrics["provenance"]["run_id"] == run_id
    assert metrics["outcome"]["status"] == "done"
    assert metrics["outcome"]["requests"] == 5


def test_summary_is_read_without_the_requests(tmp_path: Path) -> None:
    """read_summary stops before the requests: damage after the header does not reach it."""
    _run(tmp_path / "run")
    metrics = tmp_path / "run" / "metrics.json"
    data = metrics.read_bytes()
    cut = data.index(b'"requests": [')
    metrics.write_bytes(data[: cut + 14] + b"{ this is not JSON")
    assert run_folder.read_summary(tmp_path / "run").overall.requests == 5
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(metrics.read_bytes())


def test_metrics_json_still_loads_whole(tmp_path: Path) -> None:
    """metrics.json stays one JSON document with every request (pandas, jq)."""
    result = _run(tmp_path / "run")
    metrics = orjson.loads((tmp_path / "run" / "metrics.json").read_bytes())
    assert [r["id"] for r in metrics["requests"]] == [r.id for r in result.records]  # type: ignore[attr-defined]
    assert list(metrics)[-2:] == ["requests", "columns"]


def test_reading_never_repairs(tmp_path: Path) -> None:
    """A report or export reading an interrupted run leaves its cut line alone."""
    StandInEngine.stop_after = 3
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run")
    responses = tmp_path / "run" / "responses.jsonl"
    cut = responses.read_bytes()[:-15]
    responses.write_bytes(cut)
    assert len(run_folder.read_records(tmp_path / "run")) == 2
    assert responses.read_bytes() == cut
    StandInEngine.stop_after = None
    result = _run(tmp_path / "run", resume=True)
    assert len(result.records) == 5  # type: ignore[attr-defined]
    assert responses.read_bytes().endswith(b"\n")


def test_invalid_line_is_located(tmp_path: Path) -> None:
    """A broken line in the middle is an error naming the file and line, not skipped."""
    _run(tmp_path / "run")
    responses = tmp_path / "run" / "responses.jsonl"
    lines = responses.read_bytes().splitlines(keepends=True)
    responses.write_bytes(b"".join([lines[0], b'{"id": 3}\n', *lines[1:]]))
    (tmp_path / "run" / "metrics.json").unlink()
    with pytest.raises(SpecdecError, match=r"responses\.jsonl, line 2:\n(?s:.*)required field"):
        run_folder.read_records(tmp_path / "run")


def test_failed_run_writes_its_outcome_and_the_batch_reads_it(tmp_path: Path) -> None:
    """An item's error comes from the outcome its run wrote, not from its log."""
    (tmp_path / "run").mkdir()  # as a batch makes its items' folders
    with pytest.raises(SpecdecError, match="unknown strategy"):
        _run(tmp_path / "run", ["strategy.name=ngarm"])
    outcome = run_folder.read_outcome(tmp_path / "run")
    assert outcome is not None
    assert outcome.status == "failed"
    assert outcome.error_type == "UnknownPluginError"
    assert "unknown strategy 'ngarm'" in (outcome.error or "")
    assert _item_error(tmp_path / "run", 1).startswith("UnknownPluginError: unknown strategy")
    assert "without recording an outcome" in _item_error(tmp_path / "empty", -9)


def test_interrupted_outcome_is_cleared_by_resume(tmp_path: Path) -> None:
    """Ctrl-C records 'interrupted'; finishing the run later leaves only the three files."""
    StandInEngine.stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run")
    outcome = run_folder.read_outcome(tmp_path / "run")
    assert outcome is not None
    assert (outcome.status, outcome.requests) == ("interrupted", 2)
    StandInEngine.stop_after = None
    _run(tmp_path / "run", resume=True)
    assert not (tmp_path / "run" / "outcome.json").exists()
    done = run_folder.read_outcome(tmp_path / "run")
    assert done is not None
    assert done.status == "done"


KILLED_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from specdec.config import load_config
    from specdec.runner import run_experiment
    from tests.test_runner import StandInEngine

    class Slow(StandInEngine):
        def run(self, conversations, on_record):
            def slow(record):
                on_record(record)
                print("finished", record.id, flush=True)
                time.sleep(0.2 if record.id.endswith(("01", "02")) else 60)
            return super().run(conversations, slow)

    run_experiment(load_config(None, sys.argv[2:]), Path(sys.argv[1]), engine_factory=Slow)
""")


def test_log_only_run_resumes_after_a_kill_and_is_reported(tmp_path: Path) -> None:
    """A run with --sinks log killed with SIGKILL resumes and is reported."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(out), *LOG_ONLY], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert process.stdout is not None
    seen = 0
    deadline = time.monotonic() + 120
    while seen < 3 and time.monotonic() < deadline:
        if process.stdout.readline().startswith("finished"):
            seen += 1
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert seen == 3
    assert run_folder.count_records(out) == 3
    assert run_folder.read_outcome(out) is None  # killed: no outcome, no metrics.json
    result = _run(out, resume=True)
    assert StandInEngine.runs[-1] == [r.id for r in result.records][3:]  # type: ignore[attr-defined]
    report = build_report([out])
    assert report.settings[0].first.summary.overall.requests == 5
    assert report.settings[0].first.summary.resumed_requests == 3


def test_pandas_loader_reads_through_the_run_folder(tmp_path: Path) -> None:
    """to_dataframe gives one row per turn with flattened speculative counts."""
    _run(tmp_path / "run")
    frame = run_folder.to_dataframe(tmp_path / "run")
    records = run_folder.read_records(tmp_path / "run")
    assert len(frame) == sum(len(r.turns) for r in records)
    assert set(frame["id"]) == {r.id for r in records}
    assert "spec.num_accepted_tokens" in frame.columns
    assert (frame["output_tokens"] == 6).all()


def _turn(ids: tuple[int, ...], margins: tuple[float, ...] = (), text: str = "",
          spec: SpecStats | None = None) -> TurnRecord:
    return TurnRecord(prompt="q", output=text or " ".join(map(str, ids)), prompt_tokens=3,
                      output_tokens=len(ids), ttft_s=0.1, decode_s=0.4,
                      output_token_ids=ids, spec=spec, logprob_margins=margins)


def _write(folder: Path, strategy: str, records: list[RequestRecord]) -> Path:
    config = load_config(None, [f"strategy.name={strategy}", "sinks=[log]"])
    writer = run_folder.RunWriter(folder)
    writer.claim(config)
    writer.start(config, {"test": True})
    for record in records:
        writer.append(record)
    writer.finish(summarise(records, 2.0, None), records)
    return folder


def _divergent_runs(base: Path) -> list[Path]:
    """A baseline and a candidate that agree, flip a near-tie, mismatch, fail and miss."""
    spec = SpecStats(2, 6, 3, (2, 1, 0), (0, 1, 1, 0), (1, 2))
    baseline = [
        RequestRecord("same", "code", (_turn((1, 2, 3), (1.0, 1.0, 1.0)),
                                       _turn((4, 5), (2.0, 2.0)))),
        RequestRecord("tie", "code", (_turn((1, 2, 3), (1.0, 0.125, 1.0), "ab cd é"),
                                      _turn((7,), (1.0,)))),
        RequestRecord("real", "math", (_turn((9, 8, 7), (3.0, 3.0, 3.0)),)),
        RequestRecord("failed", "math", (_turn((1,), (1.0,)),)),
        RequestRecord("missing", "qa", (_turn((5, 5), (1.0, 1.0)),)),
    ]
    candidate = [
        RequestRecord("real", "math", (_turn((9, 8, 6), text="9 8 six", spec=spec),)),
        RequestRecord("same", "code", (_turn((1, 2, 3), spec=spec), _turn((4, 5), spec=spec))),
        RequestRecord("tie", "code", (_turn((1, 9, 3), text="ab xy é", spec=spec),
                                      _turn((7,), spec=spec))),
        RequestRecord("failed", "math", (), error="EngineError: boom"),
    ]
    return [_write(base / "baseline", "none", baseline),
            _write(base / "ngram", "ngram", candidate)]


def _without_columns(folder: Path) -> None:
    metrics = folder / "metrics.json"
    data = orjson.loads(metrics.read_bytes())
    del data["columns"]
    metrics.write_bytes(orjson.dumps(data))


def test_report_from_columns_equals_report_from_records(tmp_path: Path) -> None:
    """The columns give exactly the comparison the full records give."""
    fast = build_report(_divergent_runs(tmp_path / "fast"))
    folders = _divergent_runs(tmp_path / "slow")
    for folder in folders:
        _without_columns(folder)
        assert isinstance(run_folder.read_outputs(folder).requests[0], RequestRecord)
    slow = build_report(folders)
    result = fast.lossless["ngram"]
    assert (result.equal, result.near_tie, result.mismatch, result.not_compared,
            result.missing) == (2, 1, 1, 1, 2)
    assert result == slow.lossless["ngram"]
    assert [c.candidate_text for c in result.comparisons if c.position is not None] == [
        "ab xy é", "9 8 six"]
    assert fast.comparisons == slow.comparisons
    assert fast.comparisons[0].spec_bench_accepted_tokens is not None


def test_columns_are_read_from_the_end_without_the_requests(tmp_path: Path) -> None:
    """read_outputs does not parse the requests: damage there does not reach it."""
    _, ngram = _divergent_runs(tmp_path)
    metrics = ngram / "metrics.json"
    data = metrics.read_bytes()
    start = data.index(b'"requests": [') + 14
    metrics.write_bytes(data[:start] + b"{ not JSON" + data[start + 10:])
    outputs = run_folder.read_outputs(ngram)
    assert [r.id for r in outputs.requests] == ["real", "same", "tie", "failed"]
    assert outputs.requests[3].error == "EngineError: boom"
    assert list(outputs.requests[0].turns[0].output_token_ids) == [9, 8, 6]


def _record(request_id: str, error: str | None = None) -> RequestRecord:
    turn = TurnRecord(prompt="q", output="a", prompt_tokens=1, output_tokens=1, ttft_s=0.1,
                      decode_s=0.1)
    return RequestRecord(request_id, "c", () if error else (turn,), error=error)


def test_the_last_line_of_a_request_wins(tmp_path: Path) -> None:
    """A request retried after it failed: its new line replaces the failed one."""
    responses = tmp_path / "run" / "responses.jsonl"
    responses.parent.mkdir()
    lines = [_record("a"), _record("b", "too long"), _record("c"), _record("b")]
    responses.write_bytes(b"".join(orjson.dumps(unstructure(r)) + b"\n"
                                   for r in lines))
    records = run_folder.read_records(tmp_path / "run")
    assert [(r.id, r.error) for r in records] == [("a", None), ("c", None), ("b", None)]


def test_overwrite_says_how_many_finished_requests_it_deletes(tmp_path: Path) -> None:
    """--overwrite of an unfinished run: a warning naming the folder and the count."""
    StandInEngine.stop_after = 3
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run")
    StandInEngine.stop_after = None
    with capture_logs() as logs:
        _run(tmp_path / "run", overwrite=True)
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [(w["folder"], w["requests"]) for w in warnings] == [(str(tmp_path / "run"), 3)]
    assert "--overwrite deletes the finished requests" in warnings[0]["event"]
    assert len(run_folder.read_records(tmp_path / "run")) == 5


def test_overwrite_and_resume_together_are_refused(tmp_path: Path) -> None:
    """The library refuses them too, before anything is deleted."""
    StandInEngine.stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run")
    with pytest.raises(SpecdecError, match="contradict"):
        run_folder.RunWriter(tmp_path / "run").claim(
            load_config(None, LOG_ONLY), overwrite=True, resume=True)
    assert run_folder.count_records(tmp_path / "run") == 2


def test_output_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    """A file where the run folder should be: one clear error, the file untouched."""
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(SpecdecError, match="is a file, not a folder"):
        _run(tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "mine"


def test_damaged_metrics_json_is_rewritten_as_its_message_says(tmp_path: Path) -> None:
    """The message's remedy works: delete it, resume with the run's config.yaml."""
    _run(tmp_path / "run")
    metrics = tmp_path / "run" / "metrics.json"
    expected = run_folder.read_summary(tmp_path / "run")
    metrics.write_bytes(metrics.read_bytes()[:100])
    with pytest.raises(SpecdecError, match=r"is damaged .*delete .*metrics\.json and run "
                                           r"`specdec-run --resume --output-dir "):
        run_folder.read_run(tmp_path / "run")
    metrics.unlink()
    StandInEngine.runs = []
    # What `specdec-run --resume --output-dir run` does: the folder's config.yaml, resumed.
    run_experiment(load_config(tmp_path / "run" / "config.yaml"), tmp_path / "run",
                   resume=True, engine_factory=StandInEngine)
    assert StandInEngine.runs == [[]]  # no request ran again
    assert run_folder.read_summary(tmp_path / "run").overall == expected.overall


def test_latest_unfinished_run(tmp_path: Path) -> None:
    """The unfinished run changed last; finished runs and stray files are not candidates."""
    assert run_folder.latest_unfinished(tmp_path / "missing") is None
    for name, files in (("old", ["responses.jsonl"]), ("new", ["config.yaml"]),
                        ("done", ["responses.jsonl", "metrics.json"])):
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_text("")
    (tmp_path / "stray.txt").write_text("")
    os.utime(tmp_path / "old" / "responses.jsonl", (1, 1))
    assert run_folder.latest_unfinished(tmp_path) == tmp_path / "new"


def test_missing_folder_is_said_plainly(tmp_path: Path) -> None:
    """Reading a folder that does not exist says so, not 'holds no metrics.json'."""
    for read in (run_folder.read_records, run_folder.read_summary, run_folder.read_config):
        with pytest.raises(SpecdecError, match="does not exist"):
            read(tmp_path / "nowhere")


def test_runs_of_earlier_releases_without_seeds_or_repeat_still_read(tmp_path: Path) -> None:
    """A run written before per-request seeds (no turn seed, no config repeat) reads as before.

    Its turns read with seed None and its config with repeat 0; records, summary,
    outputs and a report read as they did.
    """
    folder = tmp_path / "run"
    _run(folder)
    responses = folder / run_folder.RESPONSES_FILE
    assert b'"seed":null' in responses.read_bytes()  # today's records name the field

    def old(data: object) -> object:
        if isinstance(data, dict):
            return {k: old(v) for k, v in data.items() if k not in ("seed", "repeat")}
        if isinstance(data, list):
            return [old(v) for v in data]
        return data

    responses.write_bytes(b"".join(orjson.dumps(old(orjson.loads(line))) + b"\n"
                                   for line in responses.read_bytes().splitlines()))
    config_file = folder / run_folder.CONFIG_FILE
    document = yaml.safe_load(config_file.read_text())
    document["config"] = old(document["config"])
    assert "repeat" not in document["config"]
    config_file.write_text(yaml.safe_dump(document))
    metrics = folder / "metrics.json"
    text = metrics.read_bytes()
    text = re.sub(rb',\n *"repeat": 0', b"", text.replace(b',"seed":null', b""))
    metrics.write_bytes(text)
    assert b'"repeat"' not in text
    assert b'"seed":null' not in text  # the records' compact form; generation.seed stays
    records = run_folder.read_records(folder)
    assert len(records) == 5
    assert all(t.seed is None for r in records for t in r.turns)
    assert run_folder.read_config(folder).repeat == 0
    assert run_folder.read_summary(folder).overall.requests == 5
    assert len(run_folder.read_outputs(folder).requests) == 5
    assert build_report([folder]).settings
