"""Shared fixtures: registry snapshots, CLI runners and the real engine marker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from specdec import registry

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SPEC_BENCH = SHARED / "data" / "spec_bench" / "question.jsonl"
BIN = Path(sys.executable).parent

# The CLI turns an unexpected exception (a bug) into one line and a saved traceback file,
# for users. Tests must fail on bugs instead, so specdec.cli.invoke re-raises while this is
# set: for every test and, through os.environ, for every process a test starts. Only the
# test of that handler itself unsets it (tests/test_user_errors.py).
os.environ["SPECDEC_TRACEBACK"] = "1"


@pytest.fixture(autouse=True)
def _fresh_registries() -> Iterator[None]:
    """Each test sees the installed plugins, not what an earlier test added."""
    for reg in registry.all_registries():
        reg.reset()
    yield
    for reg in registry.all_registries():
        reg.reset()


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run one of specdec's console scripts as a user would, capturing its output."""
    command, *rest = args
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(BIN / command), *rest],
        cwd=cwd or ROOT, capture_output=True, text=True, env=full_env, timeout=timeout,
        check=False,
    )
