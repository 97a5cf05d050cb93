"""The main job: `scripts/main.sh` runs the quick study with no arguments, specdec-run with some."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from specdec.benchmark_store import resolve_benchmark
from specdec.benchmarks.loader import load_benchmark
from specdec.study import expand_study, load_study

ROOT = Path(__file__).resolve().parent.parent


def _fake_checkout(tmp_path: Path) -> tuple[Path, Path]:
    """main.sh in a checkout whose set-up and commands only log how they were called."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    (root / ".venv" / "bin").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "main.sh", root / "scripts" / "main.sh")
    calls = tmp_path / "calls"
    for name, path in (("setup", root / "scripts" / "setup.sh"),
                       ("specdec", root / ".venv" / "bin" / "specdec"),
                       ("specdec-run", root / ".venv" / "bin" / "specdec-run")):
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n')
        path.chmod(0o755)
    return root, calls


def test_main_job_without_arguments_runs_the_quick_study(tmp_path: Path) -> None:
    """Set-up, every model the study needs, then the study into results/quick (or the env's)."""
    root, calls = _fake_checkout(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "SPECDEC_MAIN_OUTPUT"}
    subprocess.run([str(root / "scripts" / "main.sh")], check=True, env=env)
    assert calls.read_text().splitlines() == [
        "setup ",
        "specdec models prepare smollm2-135m smollm2-135m-draft smollm2-135m-eagle",
        "specdec study studies/quick.yaml --output-base results/quick",
    ]
    calls.unlink()
    subprocess.run([str(root / "scripts" / "main.sh")], check=True,
                   env={**env, "SPECDEC_MAIN_OUTPUT": str(tmp_path / "mine")})
    assert calls.read_text().splitlines()[-1] == (
        f"specdec study studies/quick.yaml --output-base {tmp_path / 'mine'}")


def test_main_job_with_arguments_is_one_run(tmp_path: Path) -> None:
    """Arguments still go to specdec-run, as they always did."""
    root, calls = _fake_checkout(tmp_path)
    subprocess.run([str(root / "scripts" / "main.sh"), "--strategy", "ngram", "--limit", "8"],
                   check=True)
    assert calls.read_text().splitlines()[-1] == "specdec-run --strategy ngram --limit 8"


def test_the_quick_study_compares_four_methods_across_every_category() -> None:
    """Baseline, ngram, the draft and EAGLE; two prompts of each category; small and eager."""
    study = load_study(ROOT / "studies" / "quick.yaml")
    items = expand_study(study)
    assert [item.experiment["strategy"]["name"] for item in items] == [
        "none", "ngram", "draft_model", "eagle"]
    assert study.repeats == 1
    experiment = items[0].experiment
    assert experiment["generation"]["max_tokens"] <= 64
    assert experiment["engine"]["enforce_eager"] is True
    assert experiment["mode"] == "sequential"
    bench = experiment["benchmark"]
    conversations = load_benchmark(resolve_benchmark(bench.get("path")), bench.get("format"),
                                   per_category=bench["per_category"])
    every = load_benchmark(resolve_benchmark(None), None)
    categories = {c.category for c in every}
    assert {c.category for c in conversations} == categories
    assert len(conversations) == 2 * len(categories)
