"""The command lines, in-process: flags, help, exit codes and plugin commands.

Most tests call :func:`specdec.cli.main` with an argv list and read what it
printed through ``capsys``; the functions a command calls are replaced where
they would start an engine.  A few subprocess tests check the installed
console scripts keep the exit-code and no-traceback promise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from cyclopts import App, Parameter

from specdec import cli, commands
from specdec.errors import EngineError, InvalidOptionError
from specdec.records import ExperimentConfig

from .conftest import run_cli


@pytest.fixture(autouse=True)
def _fresh_command_plugins() -> Iterator[None]:
    """Each test sees the installed command plugins only."""
    commands.command_plugins.reset()
    yield
    commands.command_plugins.reset()


def _config_of(*argv: str) -> ExperimentConfig:
    """The config `specdec run ARGV` would run, without running it."""
    command, bound, _ = cli.build_app().parse_args(["run", *argv])
    assert command is cli.run
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop("log_format", None)
    return cli.build_config(**arguments)


def test_no_flags_is_the_default_experiment() -> None:
    """No flags: exactly the built-in defaults."""
    assert _config_of() == ExperimentConfig()


def test_every_run_flag_reaches_the_config() -> None:
    """Each flag of `run` lands on its config key."""
    config = _config_of(
        "--model", "some/model", "--strategy", "ngram", "--mode", "batch", "--limit", "3",
        "--categories", "math, rag", "--per-category", "2", "--benchmark", "b.jsonl",
        "--benchmark-format", "chat",
        "--sinks", "json,log", "--endpoint", "http://h:1", "--concurrency", "2",
        "--request-rate", "1.5", "--raw-prompts",
        "--set", "generation.max_tokens=7", "--set", "engine.seed=3",
    )
    assert config.model == "some/model"
    assert config.strategy.name == "ngram"
    assert config.mode == "batch"
    assert (config.benchmark.path, config.benchmark.format) == ("b.jsonl", "chat")
    assert (config.benchmark.limit, config.benchmark.categories) == (3, ("math", "rag"))
    assert config.benchmark.per_category == 2
    assert config.sinks == ("json", "log")
    assert (config.engine.backend, config.engine.url) == ("server", "http://h:1")
    assert (config.engine.concurrency, config.engine.request_rate) == (2, 1.5)
    assert config.chat_template is False
    assert (config.generation.max_tokens, config.engine.seed) == (7, 3)


def test_launch_selects_the_server_backend() -> None:
    """--launch runs against a server this run starts."""
    config = _config_of("--launch")
    assert (config.engine.backend, config.engine.launch) == ("server", True)


def test_precedence_file_then_flags_then_set(tmp_path: Path) -> None:
    """defaults < --config < flags < --set; a file's strategy options stay with its strategy."""
    path = tmp_path / "exp.yaml"
    path.write_text("strategy: {name: ngram, num_speculative_tokens: 2}\n"
                    "benchmark: {limit: 9}\nmode: batch\n")
    same = _config_of("--config", str(path), "--strategy", "ngram", "--limit", "4")
    assert same.strategy.options == {"num_speculative_tokens": 2}
    assert (same.benchmark.limit, same.mode) == (4, "batch")
    other = _config_of("--config", str(path), "--strategy", "draft_model")
    assert (other.strategy.name, other.strategy.options) == ("draft_model", {})
    assert _config_of("--config", str(path), "--limit", "4",
                      "--set", "benchmark.limit=5").benchmark.limit == 5


def test_help_of_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """Each command's --help explains it and shows its flags."""
    expected = {
        ("run",): ["bundled sample benchmark", "--strategy", "--resume", "examples:"],
        ("serve",): ["Ctrl-C", "--port", "--set", "--log-format"],
        ("batch",): ["--configs", "--output-base", "--repeats", "--near-tie", "--limit"],
        ("study",): ["STUDY", "--dry-run", "--output-base", "--repeats"],
        ("report",): ["RUN_DIR", "lossless", "--output", "--near-tie"],
        ("export",): ["Spec-Bench", "spec-bench", "--output", "-o", "--model-id"],
        ("models", "prepare"): ["SPECDEC_HOME", "--force"],
        ("models", "list"): ["bundled models"],
        ("plugins",): ["strategy"],
        (): ["run", "models", "plugins", "serve", "batch", "study", "report", "export"],
    }
    for command, words in expected.items():
        assert cli.main([*command, "--help"]) == 0
        out = capsys.readouterr().out
        for word in words:
            assert word in out, (command, word, out)


def test_run_help_shows_defaults_from_the_config_record(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Defaults on the help page are the config record's own."""
    monkeypatch.setenv("COLUMNS", "200")  # one line per flag
    assert cli.run_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert f"[default: {ExperimentConfig().model}]" in out
    assert f"[default: {','.join(ExperimentConfig().sinks)}]" in out
    assert "--no-" not in out


@pytest.mark.parametrize("flag", ["--output-dir", "--benchmark", "--resume", "--sinks",
                                  "--overwrite", "--limit", "--endpoint", "--launch", "--mode"])
def test_serve_refuses_flags_it_does_not_use(flag: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A run-only flag given to serve is a usage error, not silently ignored."""
    assert cli.main(["serve", flag, "x"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"Unknown option: {flag}" in err
    assert "specdec serve --help" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--limit", "many"], 'unable to convert "many" into int'),
    (["run", "--mode", "fast"], 'Invalid value "fast" for --mode'),
    (["run", "--bogus"], "Unknown option: --bogus"),
    (["bacth"], 'Did you mean "batch"?'),
    (["export", "csv", "run", "-o", "x"], 'Invalid value "csv"'),
    (["report"], "RUN_DIR requires an argument"),
    (["batch", "--output-base", "x"], "--configs"),
    ([], "choose a command"),
    (["models"], "choose a command"),
])
def test_parse_errors_exit_2_with_one_message(argv: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """What cyclopts cannot parse exits 2 with one message on stderr and nothing on stdout."""
    assert cli.main(argv) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert message in captured.err
    assert "error:" in captured.err
    assert captured.out == ""


def test_config_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid config file is bad input: exit 2, its problems listed."""
    path = tmp_path / "bad.yaml"
    path.write_text("generation: {max_token: 3}\n")
    assert cli.run_main(["--config", str(path)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"specdec: invalid configuration in {path}" in err
    assert "extra fields found (max_token); did you mean 'max_tokens'? @ $.generation" in err


def test_run_passes_output_flags_and_other_errors_exit_1(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--output-dir, --resume and --retry-failed reach the runner; a SpecdecError exits 1."""
    seen: dict[str, Any] = {}

    def fake_run(config: ExperimentConfig, output_dir: Path | None, **kwargs: Any) -> None:
        seen.update(kwargs, config=config, output_dir=output_dir)
        raise EngineError("the engine is on strike")

    monkeypatch.setattr("specdec.runner.run_experiment", fake_run)
    code = cli.main(["run", "--output-dir", str(tmp_path), "--resume", "--retry-failed"])
    assert code == cli.EXIT_FAILED
    # After the warning that the empty folder holds no run to resume.
    assert capsys.readouterr().err.endswith("\nspecdec: error: the engine is on strike\n")
    assert (seen["output_dir"], seen["resume"], seen["retry_failed"], seen["overwrite"]) == (
        tmp_path, True, True, False)
    cli.main(["run", "--output-dir", str(tmp_path), "--overwrite"])
    assert (seen["resume"], seen["overwrite"]) == (False, True)


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C during a run: 130 and where the finished requests are."""
    def interrupted(*_args: Any, **_kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("specdec.runner.run_experiment", interrupted)
    assert cli.run_main([]) == cli.EXIT_INTERRUPTED
    assert "finished requests are in responses.jsonl" in capsys.readouterr().err


def test_serve_starts_the_server_with_its_port(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """serve prepares the experiment, starts the server on --port and stops it when it exits."""
    import specdec.engines.launch
    import specdec.runner

    started: list[ExperimentConfig] = []
    stopped: list[bool] = []

    class Exited:
        returncode = 1

        def poll(self) -> int:
            return 1

    class FakeServer:
        log_path = Path("server.log")

        def __init__(self, config: ExperimentConfig, model: Path | str,
                     speculative_config: Any) -> None:
            started.append(config)
            self.process = Exited()

        def start(self) -> str:
            return f"http://127.0.0.1:{started[0].engine.port}"

        def stop(self) -> None:
            stopped.append(True)

    class Prepared:
        def __init__(self, config: ExperimentConfig) -> None:
            self.config = config
            self.model_path = "m"
            self.speculative_config = None

    monkeypatch.setattr(specdec.runner, "prepare_run", Prepared)
    monkeypatch.setattr(specdec.engines.launch, "ServerProcess", FakeServer)
    code = cli.main(["serve", "--strategy", "ngram", "--port", "8123",
                     "--set", "engine.max_num_seqs=4"])
    assert code == cli.EXIT_FAILED
    assert started[0].engine.port == 8123
    assert started[0].engine.max_num_seqs == 4
    # Checked against the server it launches, so serve never imports vLLM itself.
    assert (started[0].engine.backend, started[0].engine.launch) == ("server", True)
    assert stopped == [True]
    captured = capsys.readouterr()
    assert "vLLM server ready at http://127.0.0.1:8123 (ngram)" in captured.out
    assert "the server exited; see server.log" in captured.err


def test_batch_passes_benchmark_flags_and_reports_failures(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """batch: the benchmark flags reach every item; any failed item makes the exit 1."""
    import specdec.study

    ngram = tmp_path / "ngram.yaml"
    ngram.write_text("strategy: {name: ngram}\n")
    seen: dict[str, Any] = {}

    def fake_batch(items: list[specdec.study.BatchItem], output_base: Path,
                   **kwargs: Any) -> specdec.study.BatchIndex:
        seen.update(kwargs, items=items, output_base=output_base)
        statuses = tuple(specdec.study.ItemStatus(
            name=i.name, setting=i.setting, strategy="s", model="m", repeat=i.repeat,
            labels={}, status="failed", error="boom") for i in items)
        return specdec.study.BatchIndex(name="b", items=statuses)

    monkeypatch.setattr(specdec.study, "run_batch", fake_batch)
    code = cli.main(["batch", "--configs", str(ngram), "--output-base", str(tmp_path / "b"),
                     "--limit", "2", "--categories", "math", "--repeats", "2",
                     "--near-tie", "0.5"])
    assert code == cli.EXIT_FAILED
    items = seen["items"]
    assert [i.name for i in items] == ["baseline__r0", "baseline__r1", "ngram__r0", "ngram__r1"]
    assert all(i.experiment["benchmark"]["limit"] == 2 for i in items)
    assert all(i.experiment["benchmark"]["categories"] == ["math"] for i in items)
    assert (seen["name"], seen["near_tie_threshold"]) == ("b", 0.5)
    assert "specdec: ngram__r1 failed: boom" in capsys.readouterr().err


def test_study_dry_run_lists_the_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """study --dry-run lists every run of the study and runs none."""
    study = Path(__file__).parents[1] / "studies" / "ngram-sweep.yaml"
    assert cli.main(["study", str(study), "--dry-run", "--repeats", "1"]) == 0
    names = capsys.readouterr().out.split()
    assert len(names) == 3 * (1 + 4)  # max_num_seqs x (baseline + 4 ngram settings)
    assert "__none__" in names[0]  # the baseline first


def test_export_arguments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    """export FORMAT RUN_DIR -o FILE --model-id ID."""
    seen: list[tuple[Path, Path, str | None]] = []

    def fake_export(run_dir: Path, out: Path, *, model_id: str | None = None) -> int:
        seen.append((run_dir, out, model_id))
        return 3

    monkeypatch.setattr("specdec.export.export_spec_bench", fake_export)
    out = tmp_path / "a.jsonl"
    assert cli.main(["export", "spec-bench", "runs/x", "-o", str(out), "--model-id", "m"]) == 0
    assert seen == [(Path("runs/x"), out, "m")]
    assert capsys.readouterr().out == f"wrote 3 answers to {out}\n"


def test_models_prepare(monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    """models prepare NAME... --force; no name prepares the bundled model."""
    from specdec import models

    calls: list[tuple[str, bool]] = []

    def fake_prepare(name: str, *, force: bool = False) -> Path:
        calls.append((name, force))
        return Path("/cache") / name

    monkeypatch.setattr(models, "prepare", fake_prepare)
    assert cli.main(["models", "prepare", "a", "b", "--force"]) == 0
    assert cli.main(["models", "prepare"]) == 0
    assert calls == [("a", True), ("b", True), (models.BASE_ALIAS, False)]
    assert capsys.readouterr().out.splitlines()[0] == "a: /cache/a"


class HelloCommands:
    """A command plugin as a package would write it."""

    name = "hello"
    plugin_api_version = 1

    def register(self, app: App) -> None:
        """Add `specdec hello greet`."""
        hello = App(name="hello", help="Say hello.")

        @hello.command
        def greet(who: str = "world", *, times: int = 1) -> int:
            """Greet someone.

            Args:
                who: whom to greet.
                times: how often.
            """
            print(f"hello {who}\n" * times, end="")  # noqa: T201
            return 3

        app.command(hello)


def _positive(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise InvalidOptionError(f"--{attribute.name} must be at least 1, got {value}")


@Parameter(name="*")
@attrs.frozen(kw_only=True)
class CountOptions:
    """A plugin's options, checked by attrs validators when the flags are read."""

    count: int = attrs.field(default=1, validator=_positive)
    """how many"""


class CountCommands:
    """A command plugin whose options class validates its values."""

    name = "count"
    plugin_api_version = 1

    def register(self, app: App) -> None:
        """Add `specdec count`."""

        def count(options: CountOptions = CountOptions()) -> int:
            """Count."""
            print(options.count)  # noqa: T201
            return 0

        app.command(count)


class BrokenOnImport:
    """A command plugin whose package fails to import."""

    name = "broken"
    plugin_api_version = 1

    def __init__(self) -> None:
        raise ImportError("No module named 'torch'")

    def register(self, app: App) -> None:
        """Never reached."""


class BrokenRegister:
    """A command plugin with a bug in register."""

    name = "buggy"
    plugin_api_version = 1

    def register(self, app: App) -> None:
        """Fails."""
        raise RuntimeError("oops")


class NotACommandPlugin:
    """Lacks register: not a CommandPlugin."""

    name = "incomplete"
    plugin_api_version = 1


def test_command_plugin_adds_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    """A plugin's register(app) adds a command that runs with its own flags and exit code."""
    commands.command_plugins.add("hello", HelloCommands)
    assert cli.main(["hello", "greet", "you", "--times", "2"]) == 3
    assert capsys.readouterr().out == "hello you\nhello you\n"
    assert cli.main(["--help"]) == 0
    assert "Say hello." in capsys.readouterr().out
    assert cli.main(["hello", "greet", "--loud"]) == cli.EXIT_USAGE
    assert "Unknown option: --loud" in capsys.readouterr().err


def test_a_refused_option_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A value an options class's validator refuses is bad input: exit 2, its message."""
    commands.command_plugins.add("count", CountCommands)
    assert cli.main(["count", "--count", "2"]) == 0
    assert capsys.readouterr().out == "2\n"
    assert cli.main(["count", "--count", "0"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err == "specdec: error: --count must be at least 1, got 0\n"


def test_broken_command_plugins_are_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    """A broken command plugin is one warning each; the CLI and the other plugins still work."""
    for name, factory in (("broken", BrokenOnImport), ("buggy", BrokenRegister),
                          ("incomplete", NotACommandPlugin), ("hello", HelloCommands)):
        commands.command_plugins.add(name, factory)
    assert cli.main(["hello", "greet"]) == 3
    captured = capsys.readouterr()
    assert captured.out == "hello world\n"
    for name, reason in (("broken", "No module named 'torch'"), ("buggy", "RuntimeError: oops"),
                         ("incomplete", "missing register")):
        lines = [line for line in captured.err.splitlines() if f"plugin={name}" in line]
        assert len(lines) == 1, captured.err  # one warning, however it broke
        assert reason in lines[0]
    assert captured.err.count("command plugin skipped") == 2  # the registry logs "broken"
    assert cli.main(["models", "--help"]) == 0


def test_no_command_plugins_in_specdec_run() -> None:
    """specdec-run is the run command alone: plugins are not even loaded."""
    commands.command_plugins.add("broken", BrokenOnImport)
    app = cli.build_run_app()
    assert "hello" not in app
    assert commands.command_plugins._loaded == {}


def test_console_scripts_exit_2_without_traceback() -> None:
    """The installed scripts: a flag serve does not take, a wrong type, an unknown command."""
    for argv in (("specdec", "serve", "--output-dir", "x"),
                 ("specdec-run", "--limit", "many"),
                 ("specdec", "bacth")):
        result = run_cli(*argv)
        assert result.returncode == cli.EXIT_USAGE, (argv, result.stderr)
        assert "Traceback" not in result.stderr
        assert "error:" in result.stderr


def _flags(app: App, *path: str) -> set[str]:
    command = app
    for name in path:
        command = command[name]
    arguments = command.assemble_argument_collection(default_parameter=app.default_parameter)
    return {name for argument in arguments if argument.show for name in argument.names
            if name.startswith("-")}


def _section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def test_quick_reference_lists_every_flag() -> None:
    """QUICK_REFERENCE.md lists every flag of every core command; run's and serve's exactly."""
    import re

    text = (Path(__file__).parents[1] / "QUICK_REFERENCE.md").read_text(encoding="utf-8")
    app = cli.build_app()
    for path in (("run",), ("serve",), ("batch",), ("study",), ("tune",), ("report",), ("export",),
                 ("models", "prepare")):
        for flag in _flags(app, *path):
            assert re.search(rf"(?<![\w-]){flag}(?![\w-])", text), (path, flag)
    for heading, command in (("## `specdec-run`", "run"), ("## `specdec serve`", "serve")):
        documented = set(re.findall(r"`(--[a-z-]+)", _section(text, heading)))
        documented -= {"--help"}
        if command == "serve":
            documented -= {"--endpoint"}  # named as the way to measure the server
        assert documented == _flags(app, command), command
