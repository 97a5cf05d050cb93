"""The example plugin packages in plugins/, pip-installed and used on the real engine.

``specdec-suffix-lookup`` brings a speculation method of its own (a vLLM
``custom_class`` proposer); ``specdec-sqlite-sink`` writes runs and requests to
SQLite.  Both are installed into a temporary folder put on ``sys.path`` and
``PYTHONPATH`` while a test needs them (see :mod:`tests.isolated_install`), so
the running environment is never changed, even by a test that fails halfway.
The engine tests start vLLM twice (baseline and suffix_lookup), in
eager mode and float32 with small budgets, as test_engine_runs.py does.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from .conftest import KV_CACHE, ROOT, run_cli
from .isolated_install import on_path, pip_install, venv_has

PLUGINS = ROOT / "plugins"
SUFFIX = "specdec-suffix-lookup"
SQLITE = "specdec-sqlite-sink"
PACKAGES = (SUFFIX, SQLITE)

COMMON = (
    "--categories", "code_editing", "--limit", "3",
    "--set", "engine.enforce_eager=true",
    *KV_CACHE, "--set", "engine.dtype=float32",
    "--set", "generation.max_tokens=32", "--sinks", "json,jsonl,sqlite",
)
# Not the defaults, so the run proves the settings reach vLLM's workers in the class name.
SUFFIX_OPTIONS = ("--set", "strategy.min_match=3", "--set", "strategy.max_lookback=1024")
pytestmark = pytest.mark.installs

PROPOSER = "specdec_suffix_lookup.proposer.LongestSpanProposer_min3_lookback1024"


def _version(package: str) -> str:
    with (PLUGINS / package / "pyproject.toml").open("rb") as handle:
        version: str = tomllib.load(handle)["project"]["version"]
    return version


def _plugins_table() -> str:
    shown = run_cli("specdec", "plugins", env={"COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def _row(table: str, name: str) -> str:
    return next(line for line in table.splitlines() if f" {name} " in line)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the plugin folders, so builds and caches never land in the checkout."""
    base = tmp_path_factory.mktemp("plugins")
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".*_cache")
    return {p: Path(shutil.copytree(PLUGINS / p, base / p, ignore=ignore)) for p in PACKAGES}


@pytest.fixture(scope="module")
def target(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both plugins built and pip-installed into a temporary folder, once for the module."""
    folder = tmp_path_factory.mktemp("plugins_installed")
    pip_install(folder, *sources.values())
    return folder


@pytest.fixture
def installed(sources: dict[str, Path], target: Path) -> Iterator[dict[str, Path]]:
    """Both plugins installed for one test, and gone after it."""
    with on_path(target):
        yield sources


@pytest.mark.parametrize("package", PACKAGES)
def test_plugin_packages_own_tests_pass(sources: dict[str, Path], package: str) -> None:
    """Each plugin's own test suite passes, run as its author would (from its folder)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=sources[package], capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout


def test_plugins_command_shows_both(installed: dict[str, Path]) -> None:
    """`specdec plugins` lists each plugin with its package, version and an ok status."""
    table = _plugins_table()
    strategy = _row(table, "suffix_lookup")
    assert SUFFIX in strategy
    assert _version(SUFFIX) in strategy
    assert "strategy" in strategy
    assert " ok " in strategy
    sink = _row(table, "sqlite")
    assert SQLITE in sink
    assert _version(SQLITE) in sink
    assert "sink" in sink
    assert " ok " in sink


def test_uninstalled_plugins_are_gone(target: Path) -> None:
    """Once the packages are no longer installed, neither is listed and the name is refused."""
    with on_path(target):
        assert " suffix_lookup " in _plugins_table()
    assert not any(venv_has(p) for p in PACKAGES)
    table = _plugins_table()
    assert " suffix_lookup " not in table
    assert " sqlite " not in table
    assert " ngram " in table
    refused = run_cli("specdec-run", "--strategy", "suffix_lookup", "--limit", "1")
    assert refused.returncode != 0
    assert "unknown strategy 'suffix_lookup'" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.fixture(scope="module")
def runs(target: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A baseline run and a suffix_lookup run on the same prompts, both into one database."""
    base = tmp_path_factory.mktemp("plugin-runs")
    database = base / "db" / "specdec.sqlite"
    # INFO logging lets the test see which proposer class vLLM's worker loaded.
    env = {"SPECDEC_SQLITE_PATH": str(database), "VLLM_LOGGING_LEVEL": "INFO"}
    logs: dict[str, str] = {}
    with on_path(target):
        for name, extra in (("none", ()), ("suffix_lookup", SUFFIX_OPTIONS)):
            result = run_cli("specdec-run", "--strategy", name, "--output-dir", str(base / name),
                             *COMMON, *extra, env=env)
            assert result.returncode == 0, f"{name} failed:\n{result.stderr[-3000:]}"
            logs[name] = result.stdout + result.stderr
    return {"base": base, "database": database, "logs": logs}


def _metrics(runs: dict[str, Any], name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((runs["base"] / name / "metrics.json").read_bytes())
    return data


def _responses(runs: dict[str, Any], name: str) -> list[dict[str, Any]]:
    lines = (runs["base"] / name / "responses.jsonl").read_bytes().splitlines()
    return [orjson.loads(line) for line in lines]


def _query(runs: dict[str, Any], sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(runs["database"])) as db:
        return db.execute(sql, args).fetchall()


@pytest.mark.engine
def test_suffix_lookup_runs_its_own_proposer(runs: dict[str, Any]) -> None:
    """vLLM loaded the plugin's proposer class, with the settings named in its path."""
    config = yaml.safe_load((runs["base"] / "suffix_lookup" / "config.yaml").read_text())
    assert config["provenance"]["speculative_config"] == {
        "method": "custom_class", "model": PROPOSER, "num_speculative_tokens": 4,
    }
    assert config["config"]["strategy"] == {
        "name": "suffix_lookup", "num_speculative_tokens": 4, "min_match": 3,
        "max_lookback": 1024,
    }
    assert f"Loaded custom proposer class '{PROPOSER}'" in runs["logs"]["suffix_lookup"]


@pytest.mark.engine
def test_suffix_lookup_drafts_and_is_accepted(runs: dict[str, Any]) -> None:
    """The engine's own counters show drafts and accepted tokens on copy-heavy prompts."""
    spec = _metrics(runs, "suffix_lookup")["summary"]["engine_spec"]
    assert spec["num_drafts"] > 0
    assert spec["num_accepted_tokens"] > 0
    assert spec["mean_acceptance_length"] > 1.5


@pytest.mark.engine
def test_suffix_lookup_is_lossless(runs: dict[str, Any]) -> None:
    """Greedy in float32: every turn's token ids equal the baseline's."""
    baseline, ours = _responses(runs, "none"), _responses(runs, "suffix_lookup")
    assert [r["id"] for r in ours] == [r["id"] for r in baseline]
    for mine, theirs in zip(ours, baseline, strict=True):
        assert [t["output_token_ids"] for t in mine["turns"]] == [
            t["output_token_ids"] for t in theirs["turns"]
        ], mine["id"]


@pytest.mark.engine
def test_sqlite_has_one_row_per_run_with_the_same_figures(runs: dict[str, Any]) -> None:
    """Each run's row carries the figures of its metrics.json."""
    rows = _query(runs, "SELECT strategy, status, output_dir, requests, output_tokens, "
                        "throughput_tokens_per_s, tokens_per_s_mean, num_drafts, "
                        "num_accepted_tokens, acceptance_rate, mean_acceptance_length "
                        "FROM runs ORDER BY started_at, strategy")
    assert [r[0] for r in rows] == ["none", "suffix_lookup"]
    for row in rows:
        name = row[0]
        summary = _metrics(runs, name)["summary"]
        spec = summary["engine_spec"] or {}
        assert row[1:] == (
            "finished", str((runs["base"] / name).resolve()), summary["overall"]["requests"],
            summary["overall"]["output_tokens"], summary["throughput_tokens_per_s"],
            summary["overall"]["tokens_per_s_mean"], spec.get("num_drafts"),
            spec.get("num_accepted_tokens"), spec.get("acceptance_rate"),
            spec.get("mean_acceptance_length"),
        ), name


@pytest.mark.engine
def test_sqlite_requests_answer_plain_sql(runs: dict[str, Any]) -> None:
    """Per-turn rows sum to the run's totals and hold the same text as responses.jsonl."""
    ((run_id,),) = _query(runs, "SELECT run_id FROM runs WHERE strategy = 'suffix_lookup'")
    ((tokens, accepted, turns),) = _query(
        runs, "SELECT SUM(output_tokens), SUM(num_accepted_tokens), COUNT(*) FROM requests "
              "WHERE run_id = ?", run_id)
    metrics = _metrics(runs, "suffix_lookup")
    overall = metrics["summary"]["overall"]
    assert tokens == overall["output_tokens"]
    assert accepted == overall["spec"]["num_accepted_tokens"]
    assert turns == overall["turns"]
    stored = _query(runs, "SELECT request_id, turn_index, output FROM requests "
                          "WHERE run_id = ? ORDER BY request_id, turn_index", run_id)
    expected = [(r["id"], i, t["output"])
                for r in _responses(runs, "suffix_lookup") for i, t in enumerate(r["turns"])]
    assert stored == sorted(expected)
