"""The ray executor on a real local Ray instance, with plain commands for jobs (no engine).

One instance for the module (``ray.init`` once per process): its storage probe,
its placement by resources, and what it records when a job's task dies, when
the batch is interrupted, and when the cluster cannot be reached.  The batch of
real runs through Ray is tests/test_engine_ray.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from specdec.errors import SpecdecError
from specdec.executors.ray_cluster import RayExecutor, storage_problems
from specdec.interfaces import ExecutorOptions, Job, JobFinished, JobsRunning, JobStarted
from specdec.provenance import package_version
from specdec.registry import DISTRIBUTION

VERSION = package_version(DISTRIBUTION) or "unknown"


@pytest.fixture(scope="module")
def executor() -> Iterator[RayExecutor]:
    ray_executor = RayExecutor()
    ray_executor.connect(ExecutorOptions())
    yield ray_executor
    ray_executor.close()


def _job(tmp_path: Path, name: str, code: str) -> Job:
    return Job(name, ("-c", code), tmp_path / name / "run.log")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(predicate: object, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_jobs_run_in_order_one_per_node_and_give_their_exit_codes(
        executor: RayExecutor, tmp_path: Path) -> None:
    """Without GPUs a job asks for every CPU of the node: they run one after another."""
    code = ("import sys, time; print('start', time.time(), flush=True); time.sleep(0.5); "
            "print('end', time.time()); sys.exit({})")
    jobs = [_job(tmp_path, f"job{i}", code.format(i)) for i in range(3)]
    events = [e for e in executor.run(jobs, 0.1) if not isinstance(e, JobsRunning)]
    finished = [e for e in events if isinstance(e, JobFinished)]
    assert [(e.job.name, e.code, e.error) for e in finished] == [
        ("job0", 0, None), ("job1", 1, None), ("job2", 2, None)]
    assert [e.job.name for e in events if isinstance(e, JobStarted)] == ["job0", "job1", "job2"]
    spans = []
    for job in jobs:
        lines = job.log.read_text().splitlines()
        assert lines[0] == ""
        assert lines[1].startswith("# ")
        assert sys.executable in lines[1]
        times = {line.split()[0]: float(line.split()[1]) for line in lines[2:]}
        spans.append((times["start"], times["end"]))
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(2)), spans


def test_the_storage_check_names_the_node_that_cannot_write(executor: RayExecutor,
                                                            tmp_path: Path) -> None:
    executor.check_storage(tmp_path / "base")
    assert (tmp_path / "base").is_dir()
    assert not list((tmp_path / "base").iterdir()), "the probe files are removed"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SpecdecError, match=r"node \S+ \(.*\) cannot write into .*a-file/base.*"
                       r"storage that every node"):
        executor.check_storage(blocker / "base")


def test_a_folder_this_machine_does_not_see_and_another_specdec_are_named(
        tmp_path: Path) -> None:
    """Node storage that is not shared (the node's file is not here) and a node with another
    specdec: each named with its node, and the probe files of the others removed."""
    (tmp_path / ".specdec-probe-aaa").write_text("head")
    here = storage_problems(tmp_path, [("10.0.0.1", "aaa", "head", VERSION, None)])
    assert here == []
    assert not (tmp_path / ".specdec-probe-aaa").exists()
    problems = storage_problems(tmp_path, [
        ("10.0.0.2", "bbb", "gpu-2", VERSION, None),
        ("10.0.0.3", "ccc", "gpu-3", "0.0.9", "PermissionError: [Errno 13] denied"),
    ])
    assert problems == [
        (f"node gpu-2 (10.0.0.2) wrote {tmp_path}/.specdec-probe-bbb, but this machine does "
         "not see it"),
        f"node gpu-3 (10.0.0.3) cannot write into {tmp_path}: PermissionError: [Errno 13] denied",
        f"node gpu-3 (10.0.0.3) runs specdec 0.0.9, this machine {VERSION}",
    ]


def test_a_job_no_node_can_hold_is_refused_before_anything_starts(tmp_path: Path) -> None:
    big = RayExecutor()
    big._ray, big._cpus_per_job = None, 64.0
    one_node = [{"Alive": True, "Resources": {"CPU": 2.0}}]
    big._nodes = lambda: one_node  # type: ignore[method-assign]
    with pytest.raises(SpecdecError, match=r"job asks for 0 GPUs and 64 CPUs, but no node of "
                       r"the Ray instance started on this machine .*\(the largest has 0 GPUs "
                       r"and 2 CPUs\)"):
        next(big.run([_job(tmp_path, "job", "pass")], 0.1))
    assert not (tmp_path / "job").exists()


def _pid_in(log: Path) -> int | None:
    text = log.read_text() if log.is_file() else ""
    found = [line for line in text.splitlines() if line.startswith("pid ")]
    return int(found[0].split()[1]) if found else None


def _running_pid(events: Iterator[object], job: Job) -> int:
    """Follow ``events`` until ``job``'s process has printed its pid; that pid."""
    for _ in events:
        if (pid := _pid_in(job.log)) is not None:
            return pid
    pytest.fail(f"{job.name} ended without printing its pid")


SLEEPER = "import os, time; print('pid', os.getpid(), flush=True); time.sleep(120)"


def test_a_killed_task_is_recorded_and_takes_its_process_with_it(executor: RayExecutor,
                                                                 tmp_path: Path) -> None:
    """SIGKILL of the Ray worker running a job: the job ends with Ray's error, and its
    process (orphaned otherwise, still writing its run folder) dies too."""
    job = _job(tmp_path, "sleeper", SLEEPER)
    events = executor.run([job], 0.1)
    pid = _running_pid(events, job)
    worker = int(Path(f"/proc/{pid}/stat").read_text().split()[3])  # its parent: the worker
    os.kill(worker, signal.SIGKILL)
    ended = [e for e in events if isinstance(e, JobFinished)]
    assert len(ended) == 1
    assert ended[0].code is None
    assert ended[0].error is not None
    assert ended[0].error.startswith("its Ray task failed: ")
    assert "Worker" in ended[0].error or "worker" in ended[0].error
    assert _wait_for(lambda: not _alive(pid), 10), "the job's process outlived its worker"


def test_stopping_the_batch_stops_every_job(executor: RayExecutor, tmp_path: Path) -> None:
    """Closing the events (Ctrl-C in the batch) cancels the tasks; each stops its process."""
    job = _job(tmp_path, "sleeper", SLEEPER)
    queued = _job(tmp_path, "queued", "print('should not run')")
    events = executor.run([job, queued], 0.1)
    pid = _running_pid(events, job)
    started = time.monotonic()
    events.close()
    assert time.monotonic() - started < 60
    assert _wait_for(lambda: not _alive(pid), 10)
    assert "should not run" not in (queued.log.read_text() if queued.log.is_file() else "")


def test_an_address_nothing_answers_at_is_refused_at_once() -> None:
    """ray.init would retry for minutes; the CLI says what to do within seconds."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "specdec", "study", "studies/quick.yaml", "--executor", "ray",
         "--address", "127.0.0.1:9", "--output-base", "/nonexistent/never-written"],
        capture_output=True, text=True, timeout=120, check=False,
        cwd=Path(__file__).resolve().parents[1])
    assert time.monotonic() - started < 60
    assert result.returncode == 2, result.stderr
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in result.stderr
    assert "ray start --head" in result.stderr
