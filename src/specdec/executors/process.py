"""One job's process: its command, its output appended to its log, and how it is stopped.

Both executors run a job this way -- the local one here, the Ray one inside
its task on whichever node the task landed -- so a job's ``run.log`` reads the
same wherever it ran: a ``# <time> <command>`` header, then the process's
stdout and stderr.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from specdec.provenance import now

STOP_TIMEOUT_S = 60.0
"""How long a stopped process gets to end after SIGTERM, before SIGKILL."""

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Ask Linux to SIGTERM this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class LoggedProcess:
    """A started command whose output goes to ``log``, after a header line."""

    def __init__(self, command: Sequence[str], log: Path, *, cwd: str | None = None,
                 env: Mapping[str, str] | None = None, die_with_parent: bool = False) -> None:
        """Start ``command``; with ``die_with_parent`` (Linux), it ends if this process dies.

        A Ray worker that is killed cannot stop its job's process itself; an
        orphan would go on writing into a run folder that a resumed batch is
        writing again.
        """
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        with log.open("ab") as output:
            output.write(f"\n# {now()} {' '.join(command)}\n".encode())
            output.flush()
            preexec: Callable[[], None] | None = (
                _die_with_parent if die_with_parent and sys.platform == "linux" else None)
            self._process = subprocess.Popen(  # noqa: S603 - the command is specdec's own
                list(command), stdout=output, stderr=subprocess.STDOUT, cwd=cwd,
                env=None if env is None else dict(env), preexec_fn=preexec)  # noqa: PLW1509

    @property
    def pid(self) -> int:
        """The process id."""
        return self._process.pid

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        return self._process.poll()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT_S`; return once it has ended."""
        if self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def run_to_end(process: LoggedProcess, poll_s: float,
               on_poll: Callable[[], None] | None = None) -> int:
    """Wait for ``process`` (calling ``on_poll`` each ``poll_s``); stop it if interrupted."""
    try:
        while (code := process.poll()) is None:
            if on_poll is not None:
                on_poll()
            time.sleep(poll_s)
    except BaseException:
        process.stop()
        raise
    return code
