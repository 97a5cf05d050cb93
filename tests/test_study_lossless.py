"""A study's sampled lossless checks (``lossless_check:``) on the stand-in engine, no vLLM.

Each item and each check runs as the command the batch builds, in this process
(the batch's own view of ``subprocess`` is replaced), so the check is the very
``specdec lossless`` command line a study starts.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import types
from pathlib import Path
from typing import Any, ClassVar

import attrs
import orjson
import pytest

from specdec import cli, registry
from specdec.errors import ConfigError
from specdec.records import LosslessCheckOptions
from specdec.report import build_report
from specdec.report_files import write_report
from specdec.serialization import write_json
from specdec.study import expand_study, load_study, read_index, run_batch
from specdec.study_lossless import check_folder, plan_checks

from .test_runner import StandInEngine
from .test_sampled_check import StandInBackend

SAMPLED = "smollm2-135m__ngram__temperature=0.8"
GREEDY = "smollm2-135m__ngram__temperature=0"
STUDY = """\
name: sampled
benchmark: {limit: 4}
repeats: 1
models: [smollm2-135m]
base:
  generation: {max_tokens: 4}
  engine: {backend: stand-in}
  sinks: [log]
strategies:
  - {name: ngram, num_speculative_tokens: 3}
sweep: {generation.temperature: [0, 0.8]}
"""
CHECK = "lossless_check: {samples: 300, tokens: 2, prompts: 4, control_step: 1.2, seed: 1}\n"
"""Seed 1: with no difference 5% of seeds raise a false alarm by design (seed 0 does here)."""


@pytest.fixture(autouse=True)
def _stand_in() -> None:
    StandInEngine.reset()
    registry.engines.add("stand-in", StandInBackend)


class _InProcess:
    """Runs an item's or a check's command (``python -m specdec ...``) here, exiting with its code.

    ``fail_checks`` makes every check's command exit 2 after printing an error, as a
    check that could not start its engine does.
    """

    commands: ClassVar[list[list[str]]] = []
    fail_checks: ClassVar[bool] = False

    def __init__(self, command: list[str], stdout: Any = None, **_: Any) -> None:
        _InProcess.commands.append(command)
        args = command[3:]
        if "--log-format" in args:  # a JSON log would reconfigure this process's logging
            at = args.index("--log-format")
            del args[at:at + 2]
        if args[0] == "lossless" and _InProcess.fail_checks:
            stdout.write(b"specdec: the engine could not start: out of memory\n")
            self.returncode = 2
            return
        with contextlib.redirect_stdout(io.StringIO()):
            self.returncode = cli.main(args)

    def poll(self) -> int:
        return self.returncode


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> type[_InProcess]:
    _InProcess.commands = []
    _InProcess.fail_checks = False
    monkeypatch.setattr("specdec.executors.process.subprocess",
                        types.SimpleNamespace(Popen=_InProcess, STDOUT=subprocess.STDOUT))
    return _InProcess


def _study_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _run(tmp_path: Path, text: str = STUDY + CHECK) -> Path:
    """Run the study as ``specdec study`` does (items, then checks), into ``tmp_path/out``."""
    study = load_study(_study_file(tmp_path, text))
    items = expand_study(study)
    assert study.lossless_check is not None
    checks = plan_checks(items, study.lossless_check, study.seed)
    run_batch(items, tmp_path / "out", poll_s=0, checks=checks)
    return tmp_path / "out"


def _lossless_commands() -> list[list[str]]:
    return [c for c in _InProcess.commands if c[3] == "lossless"]


def test_only_speculative_settings_that_sample_are_checked(tmp_path: Path) -> None:
    """The sampled ngram setting is planned against the baseline at its own temperature;
    the greedy one, the baselines and A/A items are not; settings come from the study."""
    study = load_study(_study_file(tmp_path, STUDY + "aa_check: true\n" + CHECK))
    (check,) = plan_checks(expand_study(study), study.lossless_check or LosslessCheckOptions(),
                           study.seed)
    assert (check.setting, check.baseline) == (SAMPLED, "smollm2-135m__none__temperature=0.8")
    settings = check.settings
    assert (settings.samples, settings.tokens, settings.temperature, settings.control,
            settings.seed) == (300, 2, 0.8, 2.0, 1)
    assert check.experiment["benchmark"]["limit"] == 4
    assert check.describe() == (
        f"lossless check: {SAMPLED} vs smollm2-135m__none__temperature=0.8 at T=0.8 "
        "(top-p 1, top-k none), 300 samples x 4 prompts x 2 tokens per arm, control T=2, "
        "seed 1")


def test_defaults_are_the_commands_and_off_unless_asked(tmp_path: Path) -> None:
    """Without lossless_check nothing is planned; {} takes `specdec lossless`'s defaults,
    the study's seed and a control 0.1 above each temperature."""
    assert load_study(_study_file(tmp_path, STUDY)).lossless_check is None
    study = load_study(_study_file(tmp_path, STUDY + "seed: 7\nlossless_check: {}\n"))
    assert study.lossless_check is not None
    (check,) = plan_checks(expand_study(study), study.lossless_check, study.seed)
    assert (check.settings.samples, check.settings.tokens, check.settings.control,
            check.settings.seed) == (200, 4, 0.9, 7)
    assert check.experiment["benchmark"]["limit"] == 4  # the study's own selection, not cut


def test_bad_check_options_fail_the_study_file(tmp_path: Path) -> None:
    """A typo is a config error at its path; a control equal to a temperature checked, too."""
    with pytest.raises(ConfigError, match=r"lossless_check"):
        load_study(_study_file(tmp_path, STUDY + "lossless_check: {sample: 10}\n"))
    for options, problem in (
            ("{control_temperature: 0.8}",
             r"the control temperature \(0\.8\) equals the temperature checked"),
            ("{control_step: 1.5}", r"control_temperature must be <= 2, got 2\.3")):
        study = load_study(_study_file(tmp_path, f"{STUDY}lossless_check: {options}\n"))
        assert study.lossless_check is not None
        with pytest.raises(ConfigError, match=rf"lossless check of {SAMPLED}: {problem}"):
            plan_checks(expand_study(study), study.lossless_check, study.seed)


def test_dry_run_lists_the_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`specdec study --dry-run` lists every run, then every check."""
    assert cli.main(["study", str(_study_file(tmp_path, STUDY + CHECK)), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith(f"lossless check: {SAMPLED} vs ")
    assert sum(line.startswith("lossless check:") for line in lines) == 1
    assert GREEDY in lines


def test_a_lossless_strategy_passes_and_the_report_says_at_what_power(
        tmp_path: Path, in_process: type[_InProcess]) -> None:
    """The check runs `specdec lossless` into the study folder; the report shows its verdict
    with the power statement in place of `sampled`; the greedy setting keeps the exact check."""
    out = _run(tmp_path)
    (command,) = _lossless_commands()
    folder = check_folder(out, SAMPLED)
    assert command[command.index("--output") + 1] == str(folder)
    assert command[command.index("--control-temperature") + 1] == "2.0"
    (status,) = read_index(out).lossless_checks
    assert (status.setting, status.status, status.outcome) == (SAMPLED, "done", "pass")
    assert (folder / "lossless.json").is_file()
    assert (folder / "samples.json").is_file()
    report = build_report([out])
    sampled, greedy = report.lossless[SAMPLED], report.lossless[GREEDY]
    assert (sampled.verdict, sampled.passed) == ("pass (sampled check)", True)
    assert (greedy.verdict, greedy.sampled_check) == ("pass", None)
    write_report(report, out / "report")
    markdown = (out / "report" / "report.md").read_text()
    assert f"| {SAMPLED} | 0 | 0 | 0 | 0 | 0 | 0 | pass (sampled check) |" in markdown
    assert "distributional check against smollm2-135m__none__temperature=0.8: pass" in markdown
    assert "no difference detected; a total-variation distance above" in markdown
    html = (out / "report" / "report.html").read_text()
    assert "no difference detected; a total-variation distance above" in html
    data = orjson.loads((out / "report" / "report.json").read_bytes())
    assert data["lossless"][SAMPLED]["sampled_check"]["outcome"] == "pass"
    assert data["lossless"][SAMPLED]["passed"] is True


def test_a_finished_check_is_not_run_again(tmp_path: Path, in_process: type[_InProcess]) -> None:
    """Rerunning the study skips finished items and the finished check; changed settings
    run it again."""
    _run(tmp_path)
    in_process.commands = []
    out = _run(tmp_path)
    assert in_process.commands == []
    assert read_index(out).lossless_checks[0].outcome == "pass"
    _run(tmp_path, STUDY + CHECK.replace("samples: 300", "samples: 250"))
    assert len(_lossless_commands()) == 1


def test_a_lossy_strategy_fails_the_report(tmp_path: Path, in_process: type[_InProcess]) -> None:
    """A strategy that changes the distribution at temperature 0.8 is a FAIL, named with its
    cell, and `specdec report` exits 1."""
    StandInEngine.flatten_by_tokens = {3: 1.6}
    out = _run(tmp_path)
    assert read_index(out).lossless_checks[0].outcome == "difference"
    result = build_report([out]).lossless[SAMPLED]
    assert (result.verdict, result.passed) == ("FAIL (sampled check)", False)
    assert any("difference detected" in note for note in result.sampled_notes())
    assert cli.main(["report", str(out), "--output", str(tmp_path / "r")]) == cli.EXIT_FAILED


def test_a_failed_check_is_recorded_and_retried(tmp_path: Path,
                                               in_process: type[_InProcess]) -> None:
    """A check whose command fails is recorded with its error, like an item; the report
    still builds, lists it with the failed runs and says `sampled (check failed)`; the
    next run of the study runs it again."""
    in_process.fail_checks = True
    out = _run(tmp_path)
    (status,) = read_index(out).lossless_checks
    assert status.status == "failed"
    assert status.error is not None
    assert status.error.startswith("the engine could not start: out of memory (exit code 2")
    report = build_report([out])
    assert report.lossless[SAMPLED].verdict == "sampled (check failed)"
    assert report.lossless[SAMPLED].passed
    assert any(f.startswith(f"lossless check of {SAMPLED}: failed (the engine could not")
               for f in report.failed)
    write_report(report, out / "report")
    assert "its distributional check against" in (out / "report" / "report.md").read_text()
    in_process.fail_checks = False
    in_process.commands = []
    _run(tmp_path)
    assert len(in_process.commands) == 1
    assert read_index(out).lossless_checks[0].status == "done"


def test_the_study_command_exits_1_when_a_check_failed(
        tmp_path: Path, in_process: type[_InProcess],
        capsys: pytest.CaptureFixture[str]) -> None:
    """`specdec study` writes the report and names the failed check, exiting 1."""
    in_process.fail_checks = True
    path = _study_file(tmp_path, STUDY + CHECK)
    code = cli.main(["study", str(path), "--output-base", str(tmp_path / "out")])
    assert code == cli.EXIT_FAILED
    assert f"specdec: lossless check of {SAMPLED} failed: the engine" in capsys.readouterr().err
    assert (tmp_path / "out" / "report" / "report.md").is_file()


def test_an_interrupted_check_runs_again(tmp_path: Path, in_process: type[_InProcess]) -> None:
    """A check cut off while running (batch.json says running, no lossless.json) runs again
    when the study is rerun, and only it: the items are finished."""
    out = _run(tmp_path)
    index = read_index(out)
    (status,) = index.lossless_checks
    write_json(out / "batch.json", attrs.evolve(
        index, lossless_checks=(attrs.evolve(status, status="running", outcome=None),)))
    (check_folder(out, SAMPLED) / "lossless.json").unlink()
    in_process.commands = []
    _run(tmp_path)
    assert [c[3] for c in in_process.commands] == ["lossless"]
    assert read_index(out).lossless_checks[0].status == "done"
