"""Executors without a cluster: the local one, what a job asks for, and how a batch records
what any executor reports (a fake one stands for a cluster's)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Generator, Sequence
from pathlib import Path

import pytest

from specdec import registry
from specdec.config import config_from_mapping
from specdec.errors import UsageError
from specdec.executors import engine_gpus
from specdec.executors.local import LocalExecutor
from specdec.executors.process import LoggedProcess
from specdec.interfaces import (
    Executor,
    ExecutorEvent,
    ExecutorOptions,
    Job,
    JobFinished,
    JobsRunning,
    JobStarted,
)
from specdec.study import BatchItem, read_index, run_batch


def _job(tmp_path: Path, name: str, code: str) -> Job:
    return Job(name, ("-c", code), tmp_path / name / "run.log")


def test_the_builtins_satisfy_the_executor_interface() -> None:
    for name in ("local", "ray"):
        assert isinstance(registry.executors.create(name), Executor)


def test_local_runs_jobs_one_after_another_with_their_codes(tmp_path: Path) -> None:
    jobs = [_job(tmp_path, f"job{i}", f"import sys; print('out {i}'); sys.exit({i})")
            for i in range(3)]
    events = [e for e in LocalExecutor().run(jobs, 0.01) if not isinstance(e, JobsRunning)]
    assert [(type(e).__name__, e.job.name) for e in events] == [
        (kind, f"job{i}") for i in range(3) for kind in ("JobStarted", "JobFinished")]
    assert [e.code for e in events if isinstance(e, JobFinished)] == [0, 1, 2]
    lines = (tmp_path / "job2" / "run.log").read_text().splitlines()
    assert lines[1].startswith("# ")
    assert lines[1].endswith(f"{sys.executable} -c {jobs[2].args[1]}")
    assert lines[2] == "out 2"


def test_closing_the_local_events_stops_the_running_job(tmp_path: Path) -> None:
    job = _job(tmp_path, "sleeper", "import os, time; print(os.getpid(), flush=True); "
                                    "time.sleep(120)")
    events = LocalExecutor().run([job], 0.01)
    for event in events:
        if isinstance(event, JobsRunning) and len(job.log.read_text().splitlines()) > 2:
            break
    pid = int(job.log.read_text().splitlines()[2])
    events.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_local_refuses_cluster_options() -> None:
    with pytest.raises(UsageError, match="--address and --cpus-per-job are for a cluster "
                                         "executor: add --executor ray"):
        LocalExecutor().connect(ExecutorOptions(address="10.0.0.1:6379"))
    LocalExecutor().connect(ExecutorOptions())


def test_a_process_started_to_die_with_its_parent_does(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: a job's process whose runner (a Ray worker) is SIGKILLed ends too."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from specdec.executors.process import LoggedProcess\n"
        f"p = LoggedProcess([sys.executable, '-c', 'import time; time.sleep(120)'], "
        f"Path({str(tmp_path / 'log')!r}), die_with_parent={{}})\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    for die, survives in ((True, False), (False, True)):
        parent = subprocess.Popen([sys.executable, "-c", script.format(die)],
                                  stdout=subprocess.PIPE, text=True)
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.05)
        assert _alive(child) is survives
        if survives:
            os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_logged_process_stop_ends_it(tmp_path: Path) -> None:
    process = LoggedProcess([sys.executable, "-c", "import time; time.sleep(120)"],
                            tmp_path / "log")
    process.stop()
    assert process.poll() is not None


@pytest.mark.parametrize(("engine", "gpus"), [
    ({}, 1),
    ({"tensor_parallel_size": 4, "pipeline_parallel_size": 2}, 8),
    ({"backend": "server", "url": "http://gpu-box:8000", "tensor_parallel_size": 4}, 0),
    ({"backend": "server", "launch": True, "tensor_parallel_size": 2}, 2),
    ({"tensor_parallel_size": 8, "distributed_executor_backend": "ray"}, 0),
])
def test_a_job_asks_for_its_engine_s_gpus(engine: dict[str, object], gpus: int) -> None:
    assert engine_gpus(config_from_mapping({"engine": engine}, "test").engine) == gpus


STAND_IN = ("-c", "import sys; print('specdec: stand-in failure'); sys.exit(1)")


class _Cluster:
    """Stands for a cluster's executor: it records the jobs it is given and runs a stand-in
    command for each (a run that fails at once), except that a job named in ``lost`` ends
    with no exit code, as when its task dies."""

    name = "fake"
    plugin_api_version = 1

    def __init__(self, lost: Sequence[str] = ()) -> None:
        self.lost = set(lost)
        self.jobs: list[Job] = []
        self.checked: list[Path] = []

    def connect(self, options: ExecutorOptions) -> None:
        pass

    def check_storage(self, output_base: Path) -> None:
        self.checked.append(output_base)

    def run(self, jobs: Sequence[Job], poll_s: float) -> Generator[ExecutorEvent, None, None]:
        self.jobs += jobs
        for job in jobs:
            if job.name in self.lost:
                job.log.parent.mkdir(parents=True, exist_ok=True)
                yield JobStarted(job)
                yield JobFinished(job, None, "its Ray task failed: WorkerCrashedError: the "
                                             "worker died unexpectedly")
                continue
            yield from LocalExecutor().run([Job(job.name, STAND_IN, job.log, job.gpus)], poll_s)

    def close(self) -> None:
        pass


def test_a_batch_records_a_lost_task_and_resumes_it_next_time(tmp_path: Path) -> None:
    """What a cluster reports is recorded as the local executor's outcomes are: a task that
    died is a failed item with Ray's reason, and the same batch again runs it."""
    items = [BatchItem(name, name, {"strategy": {"name": "none"}, "benchmark": {"limit": 1},
                                    "engine": {"tensor_parallel_size": 2}})
             for name in ("a", "b")]
    base = tmp_path / "batch"
    cluster = _Cluster(lost=["b"])
    index = run_batch(items, base, poll_s=0.01, executor=cluster)
    assert cluster.checked == [base]
    asked = {j.name: j for j in cluster.jobs}
    assert {name: job.gpus for name, job in asked.items()} == {"a": 2, "b": 2}
    run_args = asked["a"].args
    assert run_args[:3] == ("-m", "specdec", "run")
    assert "--resume" in run_args
    assert Path(run_args[run_args.index("--output-dir") + 1]).is_absolute()
    assert Path(run_args[run_args.index("--config") + 1]).is_file()
    status = {i.name: i for i in index.items}
    assert status["a"].status == "failed"
    assert status["a"].error is not None
    assert status["a"].error.startswith("stand-in failure (exit code 1; see ")
    assert status["b"].status == "failed"
    assert status["b"].error == ("its Ray task failed: WorkerCrashedError: the worker died "
                                 f"unexpectedly; see {base / 'b' / 'run.log'}")
    assert read_index(base).items == index.items
    # The same batch again: neither finished, so both run again.
    cluster.lost.clear()
    cluster.jobs.clear()
    run_batch(items, base, poll_s=0.01, executor=cluster)
    assert sorted(j.name for j in cluster.jobs) == ["a", "b"]
