"""A batch on the real engine: baseline, ngram and the bundled draft, one broken config,
an interruption midway and a resume; then the report, the lossless check and the
Spec-Bench export read the way Spec-Bench's evaluation/speed.py reads it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from specdec import models
from specdec.metrics import spec_bench_mean_accepted_tokens
from specdec.report import load_run

from .conftest import BIN, KV_CACHE_BYTES, ROOT, run_cli
from .test_export import spec_bench_speed

pytestmark = pytest.mark.engine

COMMON = f"""
generation: {{max_tokens: 40}}
engine: {{enforce_eager: true, extra: {{kv_cache_memory_bytes: {KV_CACHE_BYTES}}}}}
"""
CONFIGS = {
    "baseline": "strategy: {name: none}",
    "ngram": "strategy: {name: ngram, num_speculative_tokens: 3, prompt_lookup_min: 2, "
             "prompt_lookup_max: 4}",
    "draft": f"strategy: {{name: draft_model, model: {models.DRAFT_ALIAS}}}",
    # Passes the checks made before the first item starts (config, strategy options,
    # the item's own model); fails when its run checks the draft against the target.
    "broken": "strategy: {name: draft_model, model: /nonexistent/draft}",
}


def _index(base: Path) -> dict[str, dict[str, Any]]:
    try:
        data = orjson.loads((base / "batch.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return {item["name"]: item for item in data["items"]}


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.is_file() else 0


@pytest.fixture(scope="module")
def batch(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Run the batch, interrupt it while ngram runs, then rerun the same command to the end."""
    tmp = tmp_path_factory.mktemp("batch")
    files = []
    for name, text in CONFIGS.items():
        path = tmp / f"{name}.yaml"
        path.write_text(COMMON + text + "\n")
        files.append(str(path))
    wanted = {"code-03", "code-04", "extract-01", "extract-02"}
    lines = [line for line in (ROOT / "data" / "sample_benchmark.jsonl").read_bytes().splitlines()
             if line.strip() and orjson.loads(line)["question_id"] in wanted]
    bench = tmp / "bench.jsonl"
    bench.write_bytes(b"\n".join(lines) + b"\n")
    base = tmp / "out"
    command = ["batch", "--configs", *files, "--output-base", str(base),
               "--benchmark", str(bench)]
    process = subprocess.Popen([str(BIN / "specdec"), *command], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 600
    interrupted = False
    while process.poll() is None and time.monotonic() < deadline:
        if _index(base).get("ngram", {}).get("status") == "running" and (
            _lines(base / "ngram" / "responses.jsonl") >= 1
        ):
            os.killpg(process.pid, signal.SIGINT)
            interrupted = True
            break
        time.sleep(0.05)
    process.wait(timeout=180)
    assert interrupted, "the batch finished before it could be interrupted"
    assert not (base / "ngram" / "metrics.json").exists()
    assert (base / "baseline" / "metrics.json").exists()
    result = run_cli("specdec", *command)
    return base, result


def test_batch_runs_records_failure_and_exits_nonzero(batch: tuple[Path, Any]) -> None:
    """The broken config is recorded as failed with its error; the others finish."""
    base, result = batch
    assert result.returncode == 1
    index = _index(base)
    assert [index[n]["status"] for n in ("baseline", "ngram", "draft")] == ["done"] * 3
    assert index["broken"]["status"] == "failed"
    assert "model '/nonexistent/draft' not found" in index["broken"]["error"]


def test_resume_does_not_redo_finished_work(batch: tuple[Path, Any]) -> None:
    """The finished baseline ran once; the interrupted ngram run continued from its file."""
    base, _ = batch
    assert (base / "baseline" / "run.log").read_text().count(" run --config ") == 1
    assert (base / "ngram" / "run.log").read_text().count(" run --config ") == 2
    ids = [orjson.loads(line)["id"] for line in
           (base / "ngram" / "responses.jsonl").read_bytes().splitlines()]
    assert len(ids) == len(set(ids)) == 4
    metrics = orjson.loads((base / "ngram" / "metrics.json").read_bytes())
    assert metrics["summary"]["resumed_requests"] >= 1
    assert [r["id"] for r in metrics["requests"]] == ids


def test_report_with_speedups_plots_and_lossless(batch: tuple[Path, Any]) -> None:
    """The report has a speedup table per category, the plots, and a passing lossless check."""
    base, _ = batch
    report_dir = base / "report"
    text = (report_dir / "report.md").read_text()
    assert "| code_editing |" in text
    assert "| extraction |" in text
    for png in ("speedup_by_category.png", "acceptance_by_position.png",
                "acceptance_length_histogram.png"):
        assert (report_dir / png).read_bytes()[:4] == b"\x89PNG"
    data = orjson.loads((report_dir / "report.json").read_bytes())
    assert set(data["lossless"]) == {"ngram", "draft"}
    for name, result in data["lossless"].items():
        assert result["passed"], (name, result)
        assert result["mismatch"] == 0
        assert result["unclassified"] == 0


def test_spec_bench_export_matches_report(batch: tuple[Path, Any], tmp_path: Path) -> None:
    """speed.py's formulas on our exported files give our report's speedup and mean tokens."""
    base, _ = batch
    for name in ("baseline", "ngram"):
        out = run_cli("specdec", "export", "spec-bench", str(base / name),
                      "-o", str(tmp_path / f"{name}.jsonl"))
        assert out.returncode == 0, out.stderr
    report = orjson.loads((base / "report" / "report.json").read_bytes())
    overall = next(c for c in report["comparisons"]
                   if c["setting"] == "ngram" and c["category"] == "overall")

    class CountingTokenizer:
        """speed.py re-tokenizes the baseline's text and subtracts a BOS token; here the
        baseline's own generated token count stands in, plus that BOS."""

        def __init__(self) -> None:
            records = load_run(base / "baseline").records
            self.counts = {t.output: t.output_tokens for r in records for t in r.turns}

        def __call__(self, text: str) -> Any:
            return type("Encoded", (), {"input_ids": [0] * (self.counts[text] + 1)})()

    _, _, ratio, accept_lengths = spec_bench_speed(
        tmp_path / "ngram.jsonl", tmp_path / "baseline.jsonl", CountingTokenizer(), "overall"
    )
    assert ratio == pytest.approx(overall["speedup_spec_bench"], rel=1e-9)
    mean_accepted = sum(accept_lengths) / len(accept_lengths)
    assert mean_accepted == pytest.approx(overall["spec_bench_accepted_tokens"], rel=1e-12)
    assert mean_accepted == pytest.approx(
        spec_bench_mean_accepted_tokens(load_run(base / "ngram").records), rel=1e-12
    )
    assert mean_accepted > 1.0


def test_spec_bench_speed_with_the_real_tokenizer(batch: tuple[Path, Any], tmp_path: Path) -> None:
    """With the real tokenizer re-reading the baseline's text, speed.py agrees closely.

    SmolLM2's tokenizer adds no BOS, so the adapter adds the one speed.py subtracts;
    re-tokenizing decoded text can still merge or split a token here and there.
    """
    from transformers import AutoTokenizer

    base, _ = batch
    for name in ("baseline", "ngram"):
        run_cli("specdec", "export", "spec-bench", str(base / name),
                "-o", str(tmp_path / f"{name}.jsonl"))
    tokenizer = AutoTokenizer.from_pretrained(str(models.prepare(models.BASE_ALIAS)))

    def with_bos(text: str) -> Any:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        return type("Encoded", (), {"input_ids": [0, *ids]})()

    _, _, ratio, _ = spec_bench_speed(tmp_path / "ngram.jsonl", tmp_path / "baseline.jsonl",
                                      with_bos, "overall")
    report = orjson.loads((base / "report" / "report.json").read_bytes())
    overall = next(c for c in report["comparisons"]
                   if c["setting"] == "ngram" and c["category"] == "overall")
    assert ratio == pytest.approx(overall["speedup_spec_bench"], rel=0.03)
