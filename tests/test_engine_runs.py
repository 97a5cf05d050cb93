"""specdec-run on the real vLLM engine with the bundled model (eager, float32, small budgets).

Each strategy runs once (one engine each) and the tests read what the runs wrote.
``eagle`` and ``eagle3`` run the EAGLE heads shipped with the package (named by
their folder, so a head trained under ``SPECDEC_HOME``, which would win, is not
the one tested): what a fresh clone runs with no training.
float32 keeps greedy text identical under speculation: in bfloat16, near-tie
tokens flip when several tokens are verified at once (see VLLM_CPU_NOTES.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
import yaml

from specdec import models
from specdec.engines.device import installed_vllm, local_device

from .conftest import KV_CACHE, SPEC_BENCH, run_cli

pytestmark = pytest.mark.engine

COMMON = (
    "--categories", "code_editing,multi_turn", "--limit", "3",
    "--set", "engine.enforce_eager=true",
    *KV_CACHE, "--set", "engine.dtype=float32",
    # The cache holds 4,854 float32 tokens of the target and the 24-layer draft together: less
    # than the model's own 8,192, which vLLM would refuse to start with.
    "--set", "engine.max_model_len=2048",
    "--set", "generation.max_tokens=24",
)


def _shipped(alias: str) -> Path:
    return models.shipped_head(models.BUNDLED[alias])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One finished run per strategy on the same prompts."""
    base = tmp_path_factory.mktemp("runs")
    strategies: dict[str, tuple[str, ...]] = {
        "none": (),
        "ngram": ("--set", "strategy.num_speculative_tokens=3",
                  "--set", "strategy.prompt_lookup_min=2", "--set", "strategy.prompt_lookup_max=4"),
        "draft_model": ("--set", f"strategy.model={models.DRAFT_ALIAS}"),
        "eagle": ("--set", f"strategy.model={_shipped(models.EAGLE_ALIAS)}"),
        "eagle3": ("--set", f"strategy.model={_shipped(models.EAGLE3_ALIAS)}"),
    }
    out: dict[str, Path] = {}
    for name, extra in strategies.items():
        folder = base / name
        result = run_cli("specdec-run", "--strategy", name, "--output-dir", str(folder),
                         *COMMON, *extra)
        assert result.returncode == 0, f"{name} failed:\n{result.stderr[-3000:]}"
        out[name] = folder
    return out


def _metrics(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((folder / "metrics.json").read_bytes())
    return data


def _responses(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "responses.jsonl").read_bytes().splitlines()
    return [orjson.loads(line) for line in lines]


def test_every_run_writes_three_files(runs: dict[str, Path]) -> None:
    """config.yaml, responses.jsonl and metrics.json, each with schema and provenance.

    The provenance names the vLLM and device that ran, whichever are installed here.
    """
    installed = installed_vllm()
    assert installed is not None
    for name, folder in runs.items():
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["schema_version"] == 1
        assert config["config"]["strategy"]["name"] == name
        assert config["provenance"]["vllm"] == installed.version
        assert config["provenance"]["torch"].startswith("2.")
        metrics = _metrics(folder)
        assert metrics["schema_version"] == 1
        assert metrics["provenance"]["device"] == local_device(installed)
        assert [r["id"] for r in metrics["requests"]] == ["code-01", "code-02", "code-03"]
        responses = _responses(folder)
        assert len(responses) == 3
        assert all(r["schema_version"] == 1 for r in responses)
        assert [len(r["turns"]) for r in responses] == [2, 2, 1]


def test_outputs_load_in_pandas_in_one_call(runs: dict[str, Path]) -> None:
    """Each sink's file is one pandas call away."""
    frame = pd.read_json(runs["ngram"] / "responses.jsonl", lines=True)
    assert list(frame["id"]) == ["code-01", "code-02", "code-03"]
    series = pd.read_json(runs["ngram"] / "metrics.json", typ="series")
    assert series["summary"]["overall"]["requests"] == 3


def test_baseline_answers_sensibly(runs: dict[str, Path]) -> None:
    """A real greedy answer from the bundled model, with engine timings."""
    first = _responses(runs["none"])[0]["turns"][0]
    assert first["output_tokens"] > 0
    assert "def" in first["output"] or "order" in first["output"]
    assert first["ttft_s"] > 0
    assert first["decode_s"] > 0
    assert first["spec"] is None
    assert _metrics(runs["none"])["summary"]["engine_spec"] is None


SPECULATIVE = ["ngram", "draft_model", "eagle", "eagle3"]


@pytest.mark.parametrize("strategy", SPECULATIVE)
def test_speculation_is_lossless(runs: dict[str, Path], strategy: str) -> None:
    """Under greedy sampling in float32, every turn's tokens equal the baseline's."""
    baseline = _responses(runs["none"])
    candidate = _responses(runs[strategy])
    for ours, theirs in zip(candidate, baseline, strict=True):
        for turn_ours, turn_theirs in zip(ours["turns"], theirs["turns"], strict=True):
            assert turn_ours["output_token_ids"] == turn_theirs["output_token_ids"], ours["id"]


@pytest.mark.parametrize("strategy", SPECULATIVE)
def test_acceptance_equals_engine_counters(runs: dict[str, Path], strategy: str) -> None:
    """Per-request figures summed over the run equal the engine's own counter deltas."""
    summary = _metrics(runs[strategy])["summary"]
    from_requests, engine = summary["overall"]["spec"], summary["engine_spec"]
    assert engine["num_drafts"] > 0
    if strategy.startswith("eagle"):  # a trained head: it drafts what the model says
        assert engine["num_accepted_tokens"] > 0
    for key in ("num_drafts", "num_draft_tokens", "num_accepted_tokens",
                "acceptance_rate", "mean_acceptance_length", "acceptance_per_position"):
        assert from_requests[key] == engine[key], key


def test_ngram_accepts_on_code_editing(runs: dict[str, Path]) -> None:
    """Copy-heavy prompts give n-gram real acceptance (a sanity check on the plumbing)."""
    spec = _metrics(runs["ngram"])["summary"]["engine_spec"]
    assert spec["acceptance_rate"] > 0.2
    assert spec["mean_acceptance_length"] > 1.5


def test_existing_run_is_not_overwritten(runs: dict[str, Path]) -> None:
    """A finished output folder is refused unless --overwrite is given."""
    result = run_cli("specdec-run", "--output-dir", str(runs["none"]), *COMMON)
    assert result.returncode == 1
    assert "already holds a finished run" in result.stderr
    assert "Traceback" not in result.stderr


def test_spec_bench_slice_with_multi_turn(tmp_path: Path) -> None:
    """A slice of Spec-Bench, two MT-Bench questions with two turns each, in batch mode."""
    if not SPEC_BENCH.is_file():
        pytest.skip("../shared/data/spec_bench/question.jsonl is not here")
    wanted = {"writing": 1, "math": 1, "summarization": 1, "rag": 1}
    lines = []
    for line in SPEC_BENCH.read_bytes().splitlines():
        record = orjson.loads(line)
        if wanted.get(record["category"], 0) > 0:
            wanted[record["category"]] -= 1
            lines.append(line)
    bench = tmp_path / "slice.jsonl"
    bench.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    result = run_cli(
        "specdec-run", "--benchmark", str(bench), "--strategy", "ngram", "--mode", "batch",
        "--output-dir", str(out), "--set", "engine.enforce_eager=true",
        *KV_CACHE,
        "--set", "generation.max_tokens=24",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = _metrics(out)
    by_id = {r["id"]: r for r in metrics["requests"]}
    two_turns = [r for r in by_id.values() if r["category"] in ("writing", "math")]
    assert len(two_turns) == 2
    for record in two_turns:
        assert len(record["turns"]) == 2
        assert record["turns"][1]["prompt_tokens"] > record["turns"][0]["prompt_tokens"] + (
            record["turns"][0]["output_tokens"]
        )
    assert set(metrics["summary"]["categories"]) == set(wanted)
