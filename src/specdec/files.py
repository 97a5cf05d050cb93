"""Writing files safely: atomic replacement and cross-process locks.

Every file specdec writes that a reader may see half-done (``metrics.json``, a
study's ``batch.json``, a model card, a checkpoint) goes through
:func:`atomic_write_bytes`: the bytes go to a hidden temporary file beside the
target, are synced, and replace the target in one rename.  A folder that must
appear complete or not at all (a prepared model, a trained head) is built inside
:func:`atomic_folder`.  Locks that guard a folder shared by several processes are
:func:`file_lock`, built on the ``filelock`` library.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


def _umask() -> int:
    # The only portable way to read the umask is to set it; put it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never part.

    The file keeps the permissions of the one it replaces; a new one gets those
    of an ordinary ``open(path, "w")``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp makes the file private (0600); a run's files are meant to be shared.
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
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


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Build a folder that appears at ``target`` complete, or not at all.

    Yields an empty hidden folder beside ``target`` to fill.  When the block ends
    normally that folder takes ``target``'s place (an older ``target`` is moved
    aside first and removed after, so it is never mixed with the new one); when
    the block raises, the folder is removed and ``target`` is left as it was.
    Processes that may build the same ``target`` at once hold :func:`file_lock`.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield work
        old = work.with_name(f"{work.name}.old")
        had_old = target.exists()
        if had_old:
            target.rename(old)
        work.rename(target)
        if had_old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file at ``path``, read in chunks."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
