"""The ``local`` executor: each job a subprocess of this one, one at a time, in order.

The default.  Items run one after another, so no two timed runs share the
machine, in the order the batch gives (its interleaved repeats).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Generator, Sequence
from pathlib import Path

from specdec.errors import UsageError
from specdec.executors.process import LoggedProcess
from specdec.interfaces import (
    ExecutorEvent,
    ExecutorOptions,
    Job,
    JobFinished,
    JobsRunning,
    JobStarted,
)
from specdec.registry import PLUGIN_API_VERSION


class LocalExecutor:
    """Run each job with this Python, here, one after another."""

    name = "local"
    plugin_api_version = PLUGIN_API_VERSION

    def connect(self, options: ExecutorOptions) -> None:
        """Nothing to reach; ``--address`` and ``--cpus-per-job`` are for a cluster."""
        if options.address is not None or options.cpus_per_job is not None:
            msg = ("--address and --cpus-per-job are for a cluster executor: add "
                   "--executor ray, or leave them out to run here")
            raise UsageError(msg)

    def check_storage(self, output_base: Path) -> None:
        """Nothing to check: this process writes the folder itself."""

    def run(self, jobs: Sequence[Job], poll_s: float) -> Generator[ExecutorEvent, None, None]:
        """Each job in turn; closing the iterator stops the one running."""
        for job in jobs:
            process = LoggedProcess([sys.executable, *job.args], job.log)
            try:
                yield JobStarted(job)
                while (code := process.poll()) is None:
                    yield JobsRunning((job,))
                    time.sleep(poll_s)
            finally:
                process.stop()
            yield JobFinished(job, code)

    def close(self) -> None:
        """Nothing to let go."""
