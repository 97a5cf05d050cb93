"""Everything a user can type wrong: one message, the right exit code, never a traceback.

One table (:data:`CASES`): each row is a command line (with the files it needs in a
temporary folder, which is also the working folder), its exit code and fragments of
its stderr.  Every row runs in-process through ``specdec.cli.main`` / ``run_main`` and
starts no engine.  ``SPECDEC_TRACEBACK`` is set for the whole session
(tests/conftest.py), so a bug in any row raises and fails it instead of becoming the
last-resort one-liner; :func:`test_last_resort_handler` is the one test without it.

Cases that need a stand-in for part of specdec (a run result with failed requests)
follow the table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import pytest
import yaml

from specdec import cli
from specdec.config import load_config
from specdec.records import ExperimentConfig
from specdec.runner import RunResult, run_experiment
from specdec.serialization import write_json
from specdec.study import BatchIndex, ItemStatus

from .test_runner import StandInEngine
from .test_values import BAD, LATIN1


@pytest.fixture(autouse=True)
def _reset_engine() -> None:
    StandInEngine.reset()

Entry = Callable[[Sequence[str] | None], int]


class Case(NamedTuple):
    """One row: ``argv`` (``{tmp}`` is the temporary folder) -> exit code, stderr fragments."""

    argv: tuple[str, ...]
    code: int
    fragments: tuple[str, ...]
    files: Mapping[str, str | bytes] = {}
    """Files to create first, by path relative to the temporary folder."""
    setup: Callable[[Path], None] | None = None
    """Builds what files cannot say (a finished run) in the temporary folder."""
    env: Mapping[str, str] = {}
    entry: Entry = cli.main
    absent: tuple[str, ...] = ()
    """Paths that must not exist afterwards (nothing was created)."""


def _finished_run(folder: Path) -> None:
    run_experiment(load_config(None, ["strategy.name=ngram", "benchmark.limit=3",
                                      "sinks=[log]"]),
                   folder, engine_factory=StandInEngine)


def _finished_run_in(name: str) -> Callable[[Path], None]:
    return lambda tmp: _finished_run(tmp / name)


def _run_with_cut_metrics(tmp: Path) -> None:
    _finished_run(tmp / "run")
    metrics = tmp / "run" / "metrics.json"
    metrics.write_bytes(metrics.read_bytes()[:200])


def _batch_with_cut_index(tmp: Path) -> None:
    _finished_run(tmp / "batch" / "ngram")
    index = tmp / "batch" / "batch.json"
    write_json(index, BatchIndex("b", (ItemStatus("ngram", "ngram", "ngram", "m", 0, {},
                                                  "done"),)))
    index.write_bytes(index.read_bytes()[:40])


SWEEP_TYPO = """\
name: typo
benchmark: {limit: 2}
strategies:
  - name: ngram
    sweep: {num_speculativ_tokens: [2, 4]}
"""

UNFINISHED = {"results/20261201-000000-ngram/responses.jsonl": "",
              "results/20261201-000000-ngram/config.yaml": "model: smollm2-135m\n",
              "results/20261130-000000-none/metrics.json": "{}"}


def row(case_id: str, *argv: str, code: int, fragments: Sequence[str],
        **kwargs: Any) -> Any:
    """A table row with its id."""
    return pytest.param(Case(tuple(argv), code, tuple(fragments), **kwargs), id=case_id)


INPUT_FILES = [
    row("benchmark-line-not-json", "--benchmark", "bad.jsonl", "--output-dir", "o",
        code=1, fragments=["bad.jsonl:2: not valid JSON"],
        files={"bad.jsonl": '{"prompt": "ok"}\n{"prompt": \n'}, entry=cli.run_main,
        absent=("o",)),
    row("strategy-option-refused", "--strategy", "ngram",
        "--set", "strategy.prompt_lookup_min=6", "--set", "strategy.prompt_lookup_max=3",
        "--output-dir", "o", code=2,
        fragments=["prompt_lookup_min (6) must be <= prompt_lookup_max (3)", "@ $.strategy"],
        entry=cli.run_main, absent=("o",)),
    row("strategy-option-misspelt", "--strategy", "ngram",
        "--set", "strategy.num_speculative_token=3", "--output-dir", "o", code=2,
        fragments=[("extra fields found (num_speculative_token); did you mean "
                    "'num_speculative_tokens'? @ $.strategy")],
        entry=cli.run_main, absent=("o",)),
]

FLAGS = [
    row("overwrite-with-resume", "run", "--overwrite", "--resume", "--output-dir", "o",
        code=2, fragments=["--overwrite and --resume contradict each other",
                           "--overwrite deletes them"], absent=("o",)),
    row("retry-failed-without-resume", "run", "--retry-failed", "--output-dir", "o", code=2,
        fragments=["--retry-failed", "pass it with --resume --output-dir DIR"]),
    row("resume-without-output-dir-names-the-latest-unfinished-run", "run", "--resume",
        code=2, files=UNFINISHED,
        fragments=["--resume needs --output-dir",
                   "pass --output-dir results/20261201-000000-ngram to resume it"]),
    row("resume-without-output-dir-and-nothing-to-resume", "run", "--resume", code=2,
        fragments=["--resume needs --output-dir", "there is no unfinished run under results/"]),
    row("resume-a-folder-with-no-run-says-a-new-one-starts", "run", "--resume",
        "--output-dir", "fresh", "--model", "./nope", code=1,
        fragments=["--resume: no run in this folder yet, so a new one starts",
                   "model './nope' not found"]),
    row("resume-a-finished-run", "run", "--resume", "--output-dir", "run", code=1,
        setup=_finished_run_in("run"),
        fragments=["run already holds a finished run (metrics.json): there is nothing",
                   "pass --overwrite instead of --resume to replace it"]),
    row("model-flag-empty", "run", "--model", "", "--output-dir", "o", code=2,
        fragments=["--model is empty"], absent=("o",)),
    row("output-dir-is-a-file", "run", "--output-dir", "taken", code=2,
        files={"taken": "a file"}, fragments=["--output-dir taken is a file, not a folder"]),
]

MODELS = [
    row("model-missing-absolute", "--model", "/nonexistent/model", "--output-dir", "o",
        code=1, fragments=["model '/nonexistent/model' not found"], entry=cli.run_main,
        absent=("o",)),
    row("model-missing-relative", "run", "--model", "./smollm2", "--output-dir", "o",
        code=1, fragments=["model './smollm2' not found: it is a path and nothing is there"]),
    row("model-missing-home", "run", "--model", "~/no/such/model", "--output-dir", "o",
        code=1, fragments=["model '~/no/such/model' not found"]),
    row("model-missing-under-a-local-folder", "run", "--model", "models/smollm2",
        "--output-dir", "o", code=1, files={"models/other/config.json": "{}"},
        fragments=["model 'models/smollm2' not found",
                   "models/ is a local folder, so this is a path, not a hub id"]),
    row("model-config-json-broken", "run", "--model", "m", "--output-dir", "o", code=1,
        files={"m/config.json": '{"architectures": ['},
        fragments=["m/config.json is not valid JSON", "the model folder is damaged"]),
]

RUN_FOLDERS = [
    row("report-folder-missing", "report", "nowhere", code=1,
        fragments=["nowhere does not exist"]),
    row("report-metrics-json-cut", "report", "run", code=1, setup=_run_with_cut_metrics,
        fragments=["run/metrics.json is damaged",
                   "delete run/metrics.json and run `specdec-run --resume --output-dir run`"]),
    row("report-batch-json-cut", "report", "batch", code=1, setup=_batch_with_cut_index,
        fragments=["batch/batch.json is damaged", "run the same `specdec batch`"]),
    row("export-folder-missing", "export", "spec-bench", "nowhere", "-o", "a.jsonl", code=1,
        fragments=["nowhere does not exist"], absent=("a.jsonl",)),
    row("export-to-a-folder", "export", "spec-bench", "run", "-o", "answers", code=1,
        files={"answers/keep": ""}, setup=_finished_run_in("run"),
        fragments=["answers is a folder: give the answer file to write"]),
    row("report-output-is-a-file", "report", "run", "--output", "taken", code=1,
        files={"taken": "mine"}, setup=_finished_run_in("run"),
        fragments=["taken is a file, not a folder"]),
    row("batch-output-base-is-a-file", "batch", "--configs", "a.yaml", "--output-base", "taken",
        code=1, files={"taken": "mine", "a.yaml": "strategy: {name: ngram}\n"},
        fragments=["taken is a file, not a folder: choose another batch folder"]),
]

STUDIES = [
    row("study-sweep-option-typo-fails-dry-run", "study", "s.yaml", "--dry-run", code=2,
        files={"s.yaml": SWEEP_TYPO},
        fragments=["study item smollm2-135m__ngram__num_speculativ_tokens=2:",
                   "study item smollm2-135m__ngram__num_speculativ_tokens=4:",
                   "extra fields found (num_speculativ_tokens)"]),
    row("study-missing-model-fails-dry-run", "study", "s.yaml", "--dry-run", code=2,
        files={"s.yaml": "models: [./nope, smollm2-135m]\n"},
        fragments=["study item nope__none: model './nope' not found"]),
    row("study-repeats-0", "study", "s.yaml", "--dry-run", code=2,
        files={"s.yaml": "repeats: 0\n"}, fragments=["repeats must be >= 1, got 0 @ $.repeats"]),
    row("study-near-tie-negative", "study", "s.yaml", "--dry-run", code=2,
        files={"s.yaml": "near_tie_threshold: -0.1\n"},
        fragments=["near_tie_threshold must be >= 0, got -0.1 @ $.near_tie_threshold"]),
    row("study-flag-repeats-0", "study", "s.yaml", "--repeats", "0", "--dry-run", code=2,
        files={"s.yaml": "name: s\n"}, fragments=['Invalid value "0" for --repeats']),
    row("batch-flag-repeats-0", "batch", "--configs", "e.yaml", "--output-base", "b",
        "--repeats", "0", code=2, files={"e.yaml": "strategy: ngram\n"},
        fragments=['Invalid value "0" for --repeats'], absent=("b",)),
    row("report-flag-near-tie-negative", "report", "r", "--near-tie", "-1", code=2,
        fragments=['Invalid value "-1.0" for --near-tie']),
]

PLUGINS = [
    row("plugin-filter-names-nothing", "models", "list", code=0,
        env={"SPECDEC_PLUGINS": "specdec-sqlite-snik"},
        fragments=["SPECDEC_PLUGINS names no installed plugin or package",
                   "specdec-sqlite-snik"]),
]

def _value_rows() -> list[Any]:
    """Every value tests/test_values.py refuses at load time, typed at the command line.

    A row of ``--set`` overrides becomes ``--set`` flags; a config mapping becomes
    an experiment file given with ``--config``.  Each must exit 2 with its one
    located line before anything runs (no output folder).
    """
    rows = []
    for case_id, (given, expected) in BAD.items():
        if isinstance(given, list):
            argv = [arg for item in given for arg in ("--set", item)]
            files: dict[str, str | bytes] = {}
        else:
            argv = ["--config", "exp.yaml"]
            files = {"exp.yaml": yaml.safe_dump(given)}
        rows.append(row(f"value-{case_id}", *argv, "--output-dir", "o", code=2,
                        fragments=[expected], files=files, entry=cli.run_main,
                        absent=("o",)))
    return rows


VALUES = [
    *_value_rows(),
    row("flag-concurrency-0", "--concurrency", "0", "--output-dir", "o", code=2,
        fragments=["concurrency must be >= 1, got 0 @ $.engine.concurrency"],
        entry=cli.run_main, absent=("o",)),
    row("flag-concurrency-negative", "--concurrency", "-1", "--output-dir", "o", code=2,
        fragments=["concurrency must be >= 1, got -1 @ $.engine.concurrency"],
        entry=cli.run_main, absent=("o",)),
    row("flag-request-rate-0", "--request-rate", "0", "--output-dir", "o", code=2,
        fragments=["request_rate must be > 0, got 0"], entry=cli.run_main, absent=("o",)),
    row("flag-limit-0", "--limit", "0", "--output-dir", "o", code=2,
        fragments=["limit must be >= 1, got 0 @ $.benchmark.limit"], entry=cli.run_main,
        absent=("o",)),
    row("set-fraction-as-integer", "--set", "generation.max_tokens=12.7", "--output-dir", "o",
        code=2, fragments=["expected an integer, got 12.7 (an integer has no fraction)"],
        entry=cli.run_main, absent=("o",)),
    row("set-quoted-boolean", "--set", 'engine.enforce_eager="false"', "--output-dir", "o",
        code=2, fragments=["write true or false"], entry=cli.run_main, absent=("o",)),
    row("set-misspelt-key", "--set", "generation.max_token=3", "--output-dir", "o", code=2,
        fragments=["did you mean 'max_tokens'?"], entry=cli.run_main, absent=("o",)),
    row("config-not-utf8", "--config", "exp.yaml", "--output-dir", "o", code=2,
        fragments=["invalid configuration in exp.yaml",
                   "not UTF-8 text (byte 0xe9 at offset 10); save it as UTF-8 @ $"],
        files={"exp.yaml": LATIN1}, entry=cli.run_main, absent=("o",)),
]
"""Values refused at load time (vLLM's bounds, strict types, unknown keys), before any engine."""

CASES = [*INPUT_FILES, *FLAGS, *MODELS, *RUN_FOLDERS, *STUDIES, *PLUGINS, *VALUES]


@pytest.mark.parametrize("case", CASES)
def test_user_error(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> None:
    """The row's command exits with its code and says its fragments; no traceback."""
    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp_path))

    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    if case.setup is not None:
        case.setup(tmp_path)
        capsys.readouterr()
    for key, value in case.env.items():
        monkeypatch.setenv(key, fill(value))
    code = case.entry([fill(a) for a in case.argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == case.code, err
    for fragment in case.fragments:
        assert fill(fragment) in err, err
    for name in case.absent:
        assert not (tmp_path / name).exists(), name


def test_last_resort_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """Without SPECDEC_TRACEBACK a bug is one line naming its saved traceback, exit 1."""
    def broken() -> None:
        msg = "a bug\nover two lines"
        raise RuntimeError(msg)

    monkeypatch.setattr("specdec.display.print_models", broken)
    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(cli.TRACEBACK_ENV)
    assert cli.main(["models", "list"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("specdec: unexpected error: RuntimeError: a bug over two lines; "
                          "the traceback is saved in ")
    assert err.endswith("; please report it\n")
    saved = next((tmp_path / "home" / "crashes").iterdir())
    assert str(saved) in err
    text = saved.read_text()
    assert "command: specdec models list" in text
    assert "Traceback (most recent call last)" in text
    assert "raise RuntimeError(msg)" in text


def test_bugs_raise_in_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """With SPECDEC_TRACEBACK (set for every test) the bug itself reaches the test."""
    def broken() -> None:
        msg = "a bug"
        raise RuntimeError(msg)

    monkeypatch.setattr("specdec.display.print_models", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["models", "list"])


def test_run_with_failed_requests_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A run that finished with failed requests prints its summary, then says so: exit 1."""
    finished = run_experiment(load_config(None, ["benchmark.limit=3", "sinks=[log]"]),
                              tmp_path / "run", engine_factory=StandInEngine)
    summary = attrs.evolve(finished.summary, failed_requests=2)

    def fake_run(config: ExperimentConfig, output_dir: Path | None, **_: Any) -> RunResult:
        return attrs.evolve(finished, config=config, summary=summary,
                            output_dir=output_dir or finished.output_dir)

    monkeypatch.setattr("specdec.runner.run_experiment", fake_run)
    capsys.readouterr()
    assert cli.run_main(["--output-dir", str(tmp_path / "o")]) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.out  # the summary is printed first
    assert (f"specdec: 2 of 5 requests failed; each one's error is recorded in "
            f"{tmp_path / 'o' / 'responses.jsonl'}") in captured.err
