"""One log pipeline: structlog events and standard-library records (vLLM's) alike."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from specdec import logs

VLLM_VARS = ("VLLM_LOGGING_CONFIG_PATH", "VLLM_CONFIGURE_LOGGING", "VLLM_LOGGING_LEVEL",
             "SPECDEC_LOG_FORMAT")


@pytest.fixture(autouse=True)
def _isolated_logging(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test configures from scratch; the process's logging is put back afterwards."""
    for name in VLLM_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(logs, "_configured", None)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    # Put structlog back as it was, not to its defaults (which print to stdout): the
    # restored logs._configured tells later tests' configure() that it is set up.
    saved = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(capture=False)
    structlog.configure(**saved)


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_json_mode_renders_structlog_and_stdlib_records_as_json(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A structlog event, a vLLM record and another library's record: three JSON lines."""
    logs.configure("json")
    structlog.get_logger("specdec.run").info("run started", run="r1")
    logging.getLogger("vllm.engine").warning("engine says %s", "hi")
    logging.getLogger("transformers").warning("loaded")
    lines = _json_lines(capsys.readouterr().err)
    assert [(line["logger"], line["level"], line["event"]) for line in lines] == [
        ("specdec.run", "info", "run started"),
        ("vllm.engine", "warning", "engine says hi"),
        ("transformers", "warning", "loaded"),
    ]
    assert lines[0]["run"] == "r1"
    assert all("timestamp" in line for line in lines)


def test_libraries_printing_on_their_own_are_adopted(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A library logger with its own stream handler and no propagation (as torch and
    transformers set theirs up) prints through our handler after configure()."""
    library = logging.getLogger("some_library")
    own = logging.StreamHandler(sys.stderr)
    own.setFormatter(logging.Formatter("PLAIN %(message)s"))
    library.addHandler(own)
    library.propagate = False
    try:
        logs.configure("json")
        library.warning("hello")
        assert _json_lines(capsys.readouterr().err)[0]["event"] == "hello"
        assert library.propagate
        assert own not in library.handlers
    finally:
        library.removeHandler(own)
        library.propagate = True


def test_json_mode_renders_exceptions_and_python_warnings_as_json(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A traceback stays inside its JSON line; a Python warning becomes a log line."""
    logs.configure("json")
    try:
        1 / 0  # noqa: B018 - the exception is the point
    except ZeroDivisionError:
        logging.getLogger("torch").exception("failed")
    warnings.warn("old API", FutureWarning, stacklevel=1)
    lines = _json_lines(capsys.readouterr().err)
    assert "ZeroDivisionError" in str(lines[0]["exception"])
    assert lines[1]["logger"] == "py.warnings"
    assert "old API" in str(lines[1]["event"])


def test_vllm_records_below_its_level_are_dropped(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM speaks at WARNING unless VLLM_LOGGING_LEVEL says otherwise, read when it logs."""
    logs.configure("json")
    logging.getLogger("vllm.engine").info("every step")
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "INFO")
    logging.getLogger("vllm.engine").info("now shown")
    assert [line["event"] for line in _json_lines(capsys.readouterr().err)] == ["now shown"]


def test_configure_twice_is_one_setup_and_a_new_format_replaces_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The same call again adds no second handler; another format reconfigures."""
    logs.configure("json")
    config = structlog.get_config()
    logs.configure("json")
    ours = [h for h in logging.getLogger().handlers if isinstance(h, logs.StderrHandler)]
    assert len(ours) == 1
    assert structlog.get_config() == config
    logs.configure("console")
    ours = [h for h in logging.getLogger().handlers if isinstance(h, logs.StderrHandler)]
    assert len(ours) == 1
    logging.getLogger("vllm.engine").warning("console now")
    err = capsys.readouterr().err
    assert "console now" in err
    assert not err.startswith("{")


def test_format_comes_from_the_environment_when_not_given(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """SPECDEC_LOG_FORMAT=json chooses JSON when configure() is called without a format."""
    monkeypatch.setenv("SPECDEC_LOG_FORMAT", "json")
    logs.configure()
    structlog.get_logger("specdec").info("hello")
    assert _json_lines(capsys.readouterr().err)[0]["event"] == "hello"


def _child_logs(code: str) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter with this one's environment: what vLLM's spawned engine
    # core and workers are.
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ}, timeout=120, check=False)


def test_spawned_process_applying_the_config_file_logs_json() -> None:
    """The file configure() points VLLM_LOGGING_CONFIG_PATH at makes a new process log JSON."""
    logs.configure("json")
    path = Path(os.environ["VLLM_LOGGING_CONFIG_PATH"])
    assert path == logs.vllm_config_path("json", logging.INFO)
    assert json.loads(path.read_text()) == logs.vllm_logging_config("json", logging.INFO)
    child = _child_logs(
        "import json, logging, logging.config, os\n"
        "logging.config.dictConfig(json.load(open(os.environ['VLLM_LOGGING_CONFIG_PATH'])))\n"
        "logging.getLogger('vllm.v1.engine.core').warning('from the engine core')\n"
        "logging.getLogger('vllm.v1.engine.core').info('below vLLM level')\n"
        "logging.getLogger('torch').info('another library')\n"
    )
    assert child.returncode == 0, child.stderr
    assert [line["event"] for line in _json_lines(child.stderr)] == [
        "from the engine core", "another library"]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_own_setup_installs_our_formatter() -> None:
    """vLLM's own logging set-up, as its engine runs it, reads our file and logs JSON."""
    logs.configure("json")
    child = _child_logs(
        "import logging\n"
        "from vllm.config.logging import LoggingConfig\n"
        "from vllm.logger import configure_logging, init_logger\n"
        "configure_logging(LoggingConfig())\n"
        "init_logger('vllm.v1.engine.core').warning('from vLLM')\n"
    )
    assert child.returncode == 0, child.stderr
    lines = [line for line in child.stderr.splitlines() if "from vLLM" in line]
    assert [json.loads(line)["logger"] for line in lines] == ["vllm.v1.engine.core"]
    assert child.stdout == ""


def test_a_parent_specdec_file_is_replaced_by_this_format() -> None:
    """A study item inherits its parent's file; its own format wins, one file per format."""
    logs.configure("console")
    inherited = os.environ["VLLM_LOGGING_CONFIG_PATH"]
    logs.configure("json")
    assert os.environ["VLLM_LOGGING_CONFIG_PATH"] != inherited
    assert json.loads(Path(os.environ["VLLM_LOGGING_CONFIG_PATH"]).read_text()) == (
        logs.vllm_logging_config("json", logging.INFO))
    assert sorted(p.name for p in Path(inherited).parent.iterdir()) == [
        "vllm-console-20.json", "vllm-json-20.json"]


def test_user_choices_for_vllm_logging_are_kept(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A user's own vLLM config file, or VLLM_CONFIGURE_LOGGING=0, is left alone."""
    own = tmp_path / "mine.json"
    monkeypatch.setenv("VLLM_LOGGING_CONFIG_PATH", str(own))
    logs.configure("json")
    assert os.environ["VLLM_LOGGING_CONFIG_PATH"] == str(own)
    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH")
    monkeypatch.setenv("VLLM_CONFIGURE_LOGGING", "0")
    logs.configure("console")
    # vLLM refuses a config file while its own set-up is off, so none is given.
    assert "VLLM_LOGGING_CONFIG_PATH" not in os.environ
