"""The ``ray`` executor: each job a Ray task, placed by the resources its engine needs.

``specdec batch|study --executor ray [--address ADDR]`` connects to the Ray
cluster at ``ADDR`` (else ``RAY_ADDRESS``, else a new one on this machine),
checks that every node can write into the batch folder and that this process
sees what they write (the batch folder must be storage every node shares), and
submits every job that is not finished, in the batch's order.  A task asks for
the job's GPUs (tensor x pipeline parallel size) and ``--cpus-per-job`` CPUs
(default 1); on a cluster without GPUs it asks for every CPU of the smallest
node instead, so no two timed runs share a machine's cores.  A task runs the
same command the local executor runs, with the Python of its node, from this
process's working directory (which must exist on every node) and with this
process's ``SPECDEC_*`` variables; its output goes to the same ``run.log``.
Tasks are not retried: a task that fails or dies is recorded, and running the
same command again resumes it, as with the local executor.

Ray is imported when the executor connects, never before: the plugin loads
(``specdec plugins``) without it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import uuid
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

from specdec.errors import SpecdecError, UsageError
from specdec.executors.process import LoggedProcess, run_to_end
from specdec.interfaces import (
    ExecutorEvent,
    ExecutorOptions,
    Job,
    JobFinished,
    JobsRunning,
    JobStarted,
)
from specdec.provenance import package_version
from specdec.registry import DISTRIBUTION, PLUGIN_API_VERSION

INSTALL = "pip install 'specdec-study[distributed]'"
"""How to get Ray for this executor."""

FORWARDED_PREFIX = "SPECDEC_"
"""Environment variables of this process that every task's command gets too."""

PROBE_TIMEOUT_S = 120.0
"""How long the storage check waits for every node's answer."""

LOCAL_OBJECT_STORE_BYTES = 200 * 1024**2
"""The object store of a cluster this executor starts itself: jobs pass only paths and codes."""


def _job_task(args: Sequence[str], log: str, cwd: str, env: Mapping[str, str]) -> int:
    """A Ray task: run one job's command on this node; its exit code.

    A cancelled task (the batch was interrupted) stops its process; a killed
    worker takes its process with it (Linux).
    """
    if not Path(cwd).is_dir():
        msg = (f"node {socket.gethostname()} has no folder {cwd}, the working directory of "
               "the batch: run the batch from a folder every node has (shared storage)")
        raise SpecdecError(msg)
    process = LoggedProcess([sys.executable, *args], Path(log), cwd=cwd,
                            env={**os.environ, **env}, die_with_parent=True)
    return run_to_end(process, 0.5)


def _specdec_version() -> str:
    return package_version(DISTRIBUTION) or "unknown"


def _probe_task(folder: str, token: str) -> tuple[str, str, str | None]:
    """A Ray task: write ``token`` into ``folder`` on this node; (host, specdec version, error)."""
    host = socket.gethostname()
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f".specdec-probe-{token}").write_text(host, encoding="utf-8")
    except OSError as exc:
        return host, _specdec_version(), f"{type(exc).__name__}: {exc}"
    return host, _specdec_version(), None


def storage_problems(folder: Path,
                     answers: Sequence[tuple[str, str, str, str, str | None]]) -> list[str]:
    """What the storage check found wrong, one line per problem; the probe files removed.

    ``answers`` hold, per node, its address, its probe's token, and what its
    probe task returned: its host name, its specdec version and the error
    writing its file (None: written).  A file a node wrote that this machine
    cannot see means the folder is not storage they share.
    """
    here = _specdec_version()
    problems: list[str] = []
    for address, token, host, version, error in answers:
        where = f"node {host} ({address})"
        path = folder / f".specdec-probe-{token}"
        if error is not None:
            problems.append(f"{where} cannot write into {folder}: {error}")
        elif not path.is_file():
            problems.append(f"{where} wrote {path}, but this machine does not see it")
        if version != here:
            problems.append(f"{where} runs specdec {version}, this machine {here}")
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    return problems


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and str(cause).strip():
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1]}"
    return f"{type(exc).__name__}: {lines[-1] if lines else text}"


class RayExecutor:
    """Run each job as a Ray task on a cluster (or on a Ray instance started here)."""

    name = "ray"
    plugin_api_version = PLUGIN_API_VERSION

    def __init__(self) -> None:
        """Not connected yet."""
        self._ray: Any = None
        self._address = "the Ray instance started on this machine"
        self._cpus_per_job: float | None = None
        self._job: Any = None

    def connect(self, options: ExecutorOptions) -> None:
        """``ray.init`` at ``options.address`` (else ``RAY_ADDRESS``, else a local instance)."""
        address = options.address or os.environ.get("RAY_ADDRESS") or None
        if address is not None:
            _use_token_if_present()  # before Ray's first import: it reads the mode then
        try:
            import ray  # noqa: PLC0415 - only when this executor is chosen
        except ImportError:
            msg = f"--executor ray needs Ray, which is not installed: {INSTALL}"
            raise UsageError(msg) from None
        kwargs: dict[str, Any] = {"log_to_driver": False}
        if address is None:
            kwargs |= {"include_dashboard": False, "object_store_memory": LOCAL_OBJECT_STORE_BYTES}
        else:
            self._address = f"the Ray cluster at {address}"
            _check_reachable(address, self._address)
        try:
            # "local": always a new instance. Left None, ray.init joins a cluster that
            # `ray start` once left in /tmp/ray (even a dead one), against what --help says.
            ray.init(address=address or "local", **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            msg = (f"cannot reach {self._address}: {exc}. Start one with `ray start --head` "
                   "and pass its address with --address (or RAY_ADDRESS), or leave --address "
                   "out to start Ray on this machine. A cluster with token authentication "
                   "(what `ray start` sets up in Ray 2.60) needs its token here: "
                   "RAY_AUTH_TOKEN, or the file ~/.ray/auth_token (`ray get-auth-token` "
                   "prints it)")
            raise UsageError(msg) from exc
        self._ray = ray
        self._cpus_per_job = options.cpus_per_job
        self._job = ray.remote(max_retries=0)(_job_task)

    def _nodes(self) -> list[dict[str, Any]]:
        return [n for n in self._ray.nodes() if n.get("Alive")]

    def check_storage(self, output_base: Path) -> None:
        """Every node writes a file into ``output_base``; this process must read each back."""
        from ray.util.scheduling_strategies import (  # noqa: PLC0415
            NodeAffinitySchedulingStrategy,
        )

        folder = output_base.resolve()
        probe = self._ray.remote(max_retries=0)(_probe_task)
        nodes = self._nodes()
        tokens = [uuid.uuid4().hex for _ in nodes]
        refs = [probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node["NodeID"], soft=False)).remote(str(folder), token)
            for node, token in zip(nodes, tokens, strict=True)]
        try:
            answers = self._ray.get(refs, timeout=PROBE_TIMEOUT_S)
        except Exception as exc:  # a task that could not run says why; every kind is the user's
            msg = (f"a node of {self._address} could not run specdec's storage check: "
                   f"{_first_line(exc)}. Every node needs the same specdec installed "
                   f"({_specdec_version()} here) in the Python its Ray workers use")
            raise SpecdecError(msg) from exc
        problems = storage_problems(folder, [
            (str(node.get("NodeManagerAddress")), token, *answer)
            for node, token, answer in zip(nodes, tokens, answers, strict=True)])
        if problems:
            msg = ("; ".join(problems) + ". The batch folder must be storage that every node "
                   "of the cluster and this machine share (NFS, say), at the same path, with "
                   "the same specdec on every node; see docs/scaling.md")
            raise SpecdecError(msg)

    def _resources(self, job: Job, nodes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        if any(n["Resources"].get("GPU", 0) > 0 for n in nodes):
            return {"num_gpus": job.gpus, "num_cpus": self._cpus_per_job or 1}
        if self._cpus_per_job is not None:
            return {"num_gpus": 0, "num_cpus": self._cpus_per_job}
        return {"num_gpus": 0, "num_cpus": min(n["Resources"].get("CPU", 1) for n in nodes)}

    def _check_fits(self, job: Job, wanted: Mapping[str, float],
                    nodes: Sequence[Mapping[str, Any]]) -> None:
        fits = [n for n in nodes if n["Resources"].get("GPU", 0) >= wanted["num_gpus"]
                and n["Resources"].get("CPU", 0) >= wanted["num_cpus"]]
        if not fits:
            most = max((n["Resources"].get("GPU", 0), n["Resources"].get("CPU", 0))
                       for n in nodes)
            msg = (f"{job.name} asks for {wanted['num_gpus']:g} GPUs and {wanted['num_cpus']:g} "
                   f"CPUs, but no node of {self._address} has that many (the largest has "
                   f"{most[0]:g} GPUs and {most[1]:g} CPUs): lower its tensor or pipeline "
                   "parallel size, or --cpus-per-job, or add a larger node")
            raise SpecdecError(msg)

    def run(self, jobs: Sequence[Job], poll_s: float) -> Generator[ExecutorEvent, None, None]:
        """Submit every job, in order; yield as each starts (its log grows) and ends."""
        nodes = self._nodes()  # asked once: the cluster's head answers each call
        wanted = {job.name: self._resources(job, nodes) for job in jobs}
        for job in jobs:
            self._check_fits(job, wanted[job.name], nodes)
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIX)}
        cwd = str(Path.cwd())
        pending: dict[Any, Job] = {}
        sizes: dict[str, int] = {}
        running: dict[str, Job] = {}
        try:
            for job in jobs:
                job.log.parent.mkdir(parents=True, exist_ok=True)
                sizes[job.name] = _size(job.log)
                ref = self._job.options(name=f"specdec {job.name}", **wanted[job.name]).remote(
                    list(job.args), str(job.log.resolve()), cwd, env)
                pending[ref] = job
            while pending:
                ready, _ = self._ray.wait(list(pending), num_returns=len(pending),
                                          timeout=poll_s)
                for job in pending.values():
                    if job.name not in running and _size(job.log) > sizes[job.name]:
                        running[job.name] = job
                        yield JobStarted(job)
                for ref in ready:
                    job = pending.pop(ref)
                    if running.pop(job.name, None) is None:
                        yield JobStarted(job)
                    yield self._finished(job, ref)
                if running:
                    yield JobsRunning(tuple(running.values()))
        finally:
            self._cancel(list(pending))

    def _finished(self, job: Job, ref: Any) -> JobFinished:
        try:
            code = self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:  # every failure of a task is recorded
            return JobFinished(job, None, f"its Ray task failed: {_first_line(exc)}")
        return JobFinished(job, int(code))

    def _cancel(self, refs: list[Any]) -> None:
        """Cancel tasks still queued or running: each running one stops its process first."""
        if not refs:
            return
        for ref in refs:
            self._ray.cancel(ref)
        deadline = time.monotonic() + 70
        left = refs
        while left and time.monotonic() < deadline:
            _, left = self._ray.wait(left, num_returns=len(left), timeout=1.0)
        for ref in left:
            self._ray.cancel(ref, force=True)

    def close(self) -> None:
        """``ray.shutdown`` (a local instance started here stops with it)."""
        if self._ray is not None:
            self._ray.shutdown()
            self._ray = None


def _use_token_if_present() -> None:
    """Send Ray's auth token when one is at hand and ``RAY_AUTH_MODE`` is not set.

    ``ray start --head`` (Ray 2.60, the release tried here) turns token
    authentication on and writes the token to ``~/.ray/auth_token``, but
    ``ray.init`` with an explicit address does not send it unless
    ``RAY_AUTH_MODE=token``: it retries for 20 s and fails with "Failed to
    connect".  The mode is read when Ray is first imported, so this runs first.  A cluster
    without authentication accepts a driver that sends one.  An explicit
    ``RAY_AUTH_MODE`` is left as it is.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or Path(path).is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


REACH_TIMEOUT_S = 5.0
"""How long the cluster's head gets to accept a connection (ray.init itself retries for minutes)."""


def _check_reachable(address: str, what: str) -> None:
    """Refuse a ``host:port`` nothing listens at, at once (ray.init would retry for minutes).

    Other forms (``auto``, ``ray://...``) are left to ``ray.init``.
    """
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or "/" in address or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        msg = (f"cannot reach {what}: nothing answered at {address} within "
               f"{REACH_TIMEOUT_S:g} s ({exc}). Start one with `ray start --head` and pass the "
               "address it prints (host:port of its GCS, port 6379 by default), or leave "
               "--address out to start Ray on this machine")
        raise UsageError(msg) from exc


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1
