"""Install packages for a test without changing the environment the tests run in.

``pip install --target`` puts a package (code, ``*.dist-info`` with its entry
points) into a temporary folder; putting that folder first on ``sys.path`` and on
``PYTHONPATH`` makes the package installed for this process and every command it
starts, and taking it off again uninstalls it. A test that fails halfway leaves
the running venv exactly as it was: nothing was ever written into it.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def pip_install(target: Path, *sources: Path, timeout_s: float = 600) -> None:
    """Build ``sources`` (package folders) and install them into ``target``, without deps."""
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install",
         "--no-deps", "--no-build-isolation", "--target", str(target),
         *(str(s) for s in sources)],
        check=True, capture_output=True, text=True, timeout=timeout_s,
    )


@contextmanager
def on_path(target: Path) -> Iterator[None]:
    """Make the packages installed in ``target`` visible here and in child processes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(target))
        previous = os.environ.get("PYTHONPATH")
        patch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(target), previous) if p))
        importlib.invalidate_caches()
        yield
    importlib.invalidate_caches()


def venv_has(distribution: str) -> bool:
    """Whether ``distribution`` is installed in the running environment itself."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "show", "-q", distribution],
        capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": ""},
    )
    return listed.returncode == 0
