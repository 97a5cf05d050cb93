"""Writing files safely: atomic replacement and cross-process locks.

Every file specdec writes that a reader may see half-done (``metrics.json``, a
study's ``batch.json``, a model card, a checkpoint) goes through
:func:`atomic_write_bytes`: the bytes go to a hidden temporary file beside the
target, are synced, and replace the target in one rename.  Locks that guard a
folder shared by several processes (a prepared model, a trained head) are
:func:`file_lock`, built on the ``filelock`` library.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def lock_path(target: Path) -> Path:
    """The lock file that guards ``target``: a hidden ``.<name>.lock`` beside it."""
    return target.with_name(f".{target.name}.lock")


@contextmanager
def file_lock(target: Path, timeout_s: float = -1) -> Iterator[None]:
    """Hold the lock of ``target`` (see :func:`lock_path`) across processes.

    ``timeout_s`` below zero waits for as long as it takes.
    """
    lock = lock_path(target)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock, timeout=timeout_s):
        yield
