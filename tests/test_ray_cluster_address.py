"""The ray executor joining a cluster started apart (``ray start --head`` on loopback).

Its own module, with the cluster in its own process group: the other Ray tests use
an instance started in-process, and ``ray stop`` would stop every Ray on the machine.
The connecting runs in a subprocess, as ``specdec study --executor ray --address``
does, since Ray reads its authentication mode when first imported.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import BIN

SCRIPT = """
import sys
from pathlib import Path
from specdec.executors.ray_cluster import RayExecutor
from specdec.interfaces import ExecutorOptions, Job, JobFinished
base = Path(sys.argv[2])
executor = RayExecutor()
executor.connect(ExecutorOptions(address=sys.argv[1]))
executor.check_storage(base)
job = Job("job", ("-c", "import os; print('got', os.environ['SPECDEC_PROBE_VALUE'])"),
          base / "job" / "run.log")
ended = [e for e in executor.run([job], 0.2) if isinstance(e, JobFinished)]
executor.close()
print("code", ended[0].code)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    time.sleep(2)  # the GCS listens before the head's raylet has joined
    yield address
    # The head's processes share its process group; SIGTERM takes `ray start --block` ~30 s.
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def test_a_cluster_started_apart_runs_a_job_with_this_process_s_variables(
        head: str, tmp_path: Path) -> None:
    """Reached by --address (token authentication, as ``ray start`` sets it up, included),
    storage checked, the job run there with the SPECDEC_* variables of the batch."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env["SPECDEC_PROBE_VALUE"] = "forwarded"
    result = subprocess.run([sys.executable, "-c", SCRIPT, head, str(tmp_path / "base")],
                            capture_output=True, text=True, timeout=180, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "code 0"
    assert "got forwarded" in (tmp_path / "base" / "job" / "run.log").read_text()
