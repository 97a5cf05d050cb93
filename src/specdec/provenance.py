"""Where a run came from: versions, git revision, machine, command line and times.

Every file a run writes carries this, so a result can be traced and rebuilt.
Nothing here imports vLLM: a run's vLLM version and device are those its engine
reported (a server's own, not this environment's).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from specdec.engines.device import VLLM_DISTRIBUTIONS
from specdec.interfaces import Capabilities
from specdec.records import SCHEMA_VERSION


def package_version(*names: str) -> str | None:
    """The installed version of the first of ``names`` that is installed."""
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def git_revision(path: Path) -> str | None:
    """The git commit of the checkout holding ``path`` (with ``+dirty``), if any."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],  # noqa: S607 - git from PATH is what the user has
            cwd=path, capture_output=True, text=True, check=True, timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
            cwd=path, capture_output=True, text=True, check=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}+dirty" if dirty else rev


def now() -> str:
    """The current time in ISO 8601, UTC."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def collect(engine: Capabilities | None = None) -> dict[str, Any]:
    """Provenance of the current process (call once per run).

    With ``engine`` (the capabilities of the run's engine), ``vllm`` and
    ``device`` are the engine's, None where it could not tell, and ``engine``
    holds its whole report, naming what is unknown.  Without it (a study, say),
    ``vllm`` is this environment's installed version and the device is unknown.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "specdec": package_version("specdec-study"),
        "vllm": engine.vllm_version if engine else package_version(*VLLM_DISTRIBUTIONS),
        "torch": package_version("torch"),
        "python": platform.python_version(),
        "git_revision": git_revision(Path(__file__).resolve().parent),
        "device": engine.device if engine else None,
        "engine": engine.provenance() if engine else None,
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "started_at": now(),
    }
