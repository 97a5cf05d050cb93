"""Bad input to specdec-run: a clear message, a non-zero exit, no traceback.

Most run in-process, through ``run_main`` (an exception escaping it fails the
test, as a traceback would); the unknown-strategy and help tests run the
installed script, as a user does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from specdec.cli import run_main

from .conftest import run_cli


def _fails(capsys: pytest.CaptureFixture[str], result_args: tuple[str, ...], expected: str,
           code: int = 1) -> str:
    returncode = run_main(list(result_args))
    stderr = capsys.readouterr().err
    assert returncode == code, stderr
    assert "Traceback" not in stderr
    assert expected in stderr, stderr
    return stderr


def test_bad_benchmark_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed line names the file and the line."""
    bench = tmp_path / "bad.jsonl"
    bench.write_text('{"prompt": "ok"}\n{"prompt": \n')
    _fails(capsys, ("--benchmark", str(bench), "--output-dir", str(tmp_path / "o")),
           f"{bench}:2: not valid JSON")
    assert not (tmp_path / "o").exists()


def test_unknown_strategy(tmp_path: Path) -> None:
    """An unknown strategy lists close matches and what is available."""
    result = run_cli("specdec-run", "--strategy", "ngarm", "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    stderr = result.stderr
    assert "unknown strategy 'ngarm'" in stderr, stderr
    assert "Did you mean 'ngram'?" in stderr
    assert "draft_model" in stderr


def test_invalid_strategy_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad option value names its config path."""
    stderr = _fails(capsys, ("--strategy", "ngram", "--set", "strategy.prompt_lookup_min=6",
                             "--set", "strategy.prompt_lookup_max=3",
                             "--output-dir", str(tmp_path / "o")),
                    "prompt_lookup_min (6) must be <= prompt_lookup_max (3)", code=2)
    assert "@ $.strategy" in stderr


def test_misspelt_strategy_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown option of a strategy is refused with its path."""
    _fails(capsys, ("--strategy", "ngram", "--set", "strategy.num_speculative_token=3",
                    "--output-dir", str(tmp_path / "o")),
           "extra fields found (num_speculative_token); did you mean 'num_speculative_tokens'? "
           "@ $.strategy", code=2)


def test_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model that does not exist is named."""
    _fails(capsys, ("--model", "/nonexistent/model", "--output-dir", str(tmp_path / "o")),
           "model '/nonexistent/model' not found")


def test_help_explains() -> None:
    """--help describes the defaults and shows examples."""
    result = run_cli("specdec-run", "--help")
    assert result.returncode == 0
    assert "bundled sample benchmark" in result.stdout
    assert "--strategy" in result.stdout
    assert "examples:" in result.stdout
