"""Bad input to specdec-run, as a user types it into the installed script.

These two run the console script in a process of its own (the unknown-strategy
message and the help page, as a user sees them). Every in-process case of bad
input is a row of the table in tests/test_user_errors.py.
"""

from __future__ import annotations

from pathlib import Path

from .conftest import run_cli


def test_unknown_strategy(tmp_path: Path) -> None:
    """An unknown strategy lists close matches and what is available."""
    result = run_cli("specdec-run", "--strategy", "ngarm", "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    stderr = result.stderr
    assert "unknown strategy 'ngarm'" in stderr, stderr
    assert "Did you mean 'ngram'?" in stderr
    assert "draft_model" in stderr


def test_help_explains() -> None:
    """--help describes the defaults and shows examples."""
    result = run_cli("specdec-run", "--help")
    assert result.returncode == 0
    assert "bundled sample benchmark" in result.stdout
    assert "--strategy" in result.stdout
    assert "examples:" in result.stdout
