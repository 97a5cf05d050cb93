"""A batch through Ray on the real engine: baseline and ngram on the bundled model, and a
broken config, run by ``specdec batch --executor ray`` on a Ray instance it starts here.

The same batch through the local executor gives the reference.  Midway through the Ray
batch the Ray worker running the ngram item is killed (SIGKILL); the batch records the item
as failed with Ray's error, and the same command again resumes it from its
``responses.jsonl``.  Then the records of both batches
must be the same, token for token and draft for draft.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from specdec.report import load_run

from .conftest import BIN, KV_CACHE_BYTES, ROOT, run_cli
from .test_engine_batch import _index, _lines

pytestmark = pytest.mark.engine

COMMON = f"""
generation: {{max_tokens: 32}}
engine: {{enforce_eager: true, extra: {{kv_cache_memory_bytes: {KV_CACHE_BYTES}}}}}
"""
CONFIGS = {
    "baseline": "strategy: {name: none}",
    "ngram": "strategy: {name: ngram, num_speculative_tokens: 3, prompt_lookup_min: 2, "
             "prompt_lookup_max: 4}",
    "broken": "strategy: {name: draft_model, model: /nonexistent/draft}",
}


def _run_process(folder: Path) -> int | None:
    """The pid of the ``specdec run`` process writing ``folder``, if one runs."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"run" in args and str(folder).encode() in args:
            return int(proc.name)
    return None


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The local batch; the Ray batch with its ngram process killed; the Ray batch again."""
    tmp = tmp_path_factory.mktemp("ray")
    files = {}
    for name, text in CONFIGS.items():
        files[name] = tmp / f"{name}.yaml"
        files[name].write_text(COMMON + text + "\n")
    wanted = {"code-03", "code-04", "extract-01", "extract-02"}
    lines = [line for line in (ROOT / "data" / "sample_benchmark.jsonl").read_bytes().splitlines()
             if line.strip() and orjson.loads(line)["question_id"] in wanted]
    bench = tmp / "bench.jsonl"
    bench.write_bytes(b"\n".join(lines) + b"\n")

    def command(base: Path, *names: str) -> list[str]:
        return ["batch", "--configs", *(str(files[n]) for n in names), "--output-base",
                str(base), "--benchmark", str(bench)]

    local = tmp / "local"
    local_result = run_cli("specdec", *command(local, "baseline", "ngram"))
    ray_base = tmp / "ray"
    ray_command = [*command(ray_base, "baseline", "ngram", "broken"), "--executor", "ray"]
    process = subprocess.Popen([str(BIN / "specdec"), *ray_command], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 900
    killed = None
    while process.poll() is None and time.monotonic() < deadline:
        if killed is None and _lines(ray_base / "ngram" / "responses.jsonl") >= 1 and (
                pid := _run_process(ray_base / "ngram")) is not None:
            # Its parent is the Ray worker running the task: kill the task itself.
            worker = int(Path(f"/proc/{pid}/stat").read_text().split()[3])
            os.kill(worker, signal.SIGKILL)
            killed = worker
        time.sleep(0.05)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    _, first_err = process.communicate(timeout=120)
    first = {"code": process.returncode, "stderr": first_err, "index": _index(ray_base),
             "killed": killed}
    second = run_cli("specdec", *ray_command)
    return {"local": local, "local_result": local_result, "ray": ray_base, "first": first,
            "second": second}


def test_the_local_batch_is_the_reference(batches: dict[str, Any]) -> None:
    result = batches["local_result"]
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_killed_item_and_a_broken_one_are_recorded(batches: dict[str, Any]) -> None:
    first = batches["first"]
    assert first["killed"] is not None, "ngram finished before its task could be killed"
    assert first["code"] == 1, first["stderr"][-3000:]
    index = first["index"]
    assert index["baseline"]["status"] == "done"
    assert index["ngram"]["status"] == "failed"
    assert index["ngram"]["error"].startswith("its Ray task failed: ")
    assert "worker" in index["ngram"]["error"].lower()
    assert index["broken"]["status"] == "failed"
    assert "model '/nonexistent/draft' not found" in index["broken"]["error"]
    assert "specdec: broken failed:" in first["stderr"]


def test_the_same_command_resumes_the_killed_item(batches: dict[str, Any]) -> None:
    second, base = batches["second"], batches["ray"]
    assert second.returncode == 1, second.stderr[-3000:]  # broken fails again
    index = _index(base)
    assert index["ngram"]["status"] == "done"
    assert index["broken"]["status"] == "failed"
    assert (base / "baseline" / "run.log").read_text().count(" run --config ") == 1
    assert (base / "ngram" / "run.log").read_text().count(" run --config ") == 2
    metrics = orjson.loads((base / "ngram" / "metrics.json").read_bytes())
    assert metrics["summary"]["resumed_requests"] >= 1
    assert (base / "report" / "report.md").is_file()


def _tokens(folder: Path) -> dict[str, list[tuple[Any, ...]]]:
    return {record.id: [(turn.output_token_ids, turn.output_tokens,
                         turn.spec.num_draft_tokens if turn.spec else None,
                         turn.spec.accepted_per_position if turn.spec else None)
                        for turn in record.turns]
            for record in load_run(folder).records}


def test_ray_gives_the_records_the_local_executor_gives(batches: dict[str, Any]) -> None:
    for name in ("baseline", "ngram"):
        local, ray = _tokens(batches["local"] / name), _tokens(batches["ray"] / name)
        assert len(local) == 4
        assert ray == local, name
    spec = [t for turns in _tokens(batches["ray"] / "ngram").values() for t in turns]
    assert sum(t[2] or 0 for t in spec) > 0, "ngram drafted nothing: the comparison is empty"
