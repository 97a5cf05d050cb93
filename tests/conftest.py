"""Shared fixtures: registry snapshots, CLI runners and the real engine marker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import orjson
import pytest

from specdec import registry

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SPEC_BENCH = SHARED / "data" / "spec_bench" / "question.jsonl"
BIN = Path(sys.executable).parent
SAMPLE = ROOT / "data" / "sample_benchmark.jsonl"

KV_CACHE_BYTES = 384 << 20
KV_CACHE = ("--set", f"engine.extra.kv_cache_memory_bytes={KV_CACHE_BYTES}")
"""A 384 MiB KV cache for an engine test's run (17,408 tokens of the bundled model): each
engine starts about a third sooner than with 0.3 of RAM, and it holds a whole max_model_len
of the model, draft or head included (docs/studies.md)."""

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


def run_arms(folder: Path, prompts: Sequence[str], common: Sequence[str],
             arms: Mapping[str, Sequence[str]]) -> dict[str, Path]:
    """Run ``specdec-run`` once per arm on the sample benchmark's ``prompts`` (by id).

    Each arm gets ``common`` and its own arguments and writes ``folder / <arm>``;
    a failed arm fails the test with the end of its stderr.
    """
    lines = {orjson.loads(line)["question_id"]: line
             for line in SAMPLE.read_bytes().splitlines() if line.strip()}
    bench = folder / "bench.jsonl"
    bench.write_bytes(b"\n".join(lines[p] for p in prompts) + b"\n")
    out = {}
    for name, extra in arms.items():
        result = run_cli("specdec-run", "--benchmark", str(bench),
                         "--output-dir", str(folder / name), *common, *extra)
        assert result.returncode == 0, f"{name} failed:\n{result.stderr[-3000:]}"
        out[name] = folder / name
    return out
