"""Atomic writes, atomic folders and cross-process locks (specdec.files)."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from filelock import Timeout

from specdec.files import atomic_folder, atomic_write_bytes, atomic_write_text, file_lock, lock_path

HOLD_S = 0.3


def test_atomic_write_replaces_and_keeps_permissions(tmp_path: Path) -> None:
    """The new content replaces the old; a replaced file keeps its mode, a new one follows umask."""
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "new")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    target.chmod(0o640)
    atomic_write_bytes(target, b"newer")
    assert (target.read_bytes(), target.stat().st_mode & 0o777) == (b"newer", 0o640)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that dies before the rename (here: the sync) changes nothing on disk."""
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def broken_fsync(_fd: int) -> None:
        msg = "disk full"
        raise OSError(msg)

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def _build_and_fail(target: Path) -> None:
    with atomic_folder(target) as work:
        (work / "new.bin").write_text("half")
        msg = "interrupted"
        raise RuntimeError(msg)


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    """A failed build leaves the old folder; a finished one replaces it without old files."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with pytest.raises(RuntimeError, match="interrupted"):
        _build_and_fail(target)
    assert [p.name for p in target.iterdir()] == ["old.bin"]
    with atomic_folder(target) as work:
        (work / "new.bin").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_lock_file_is_hidden_beside_the_target(tmp_path: Path) -> None:
    """``.<name>.lock``: the name models.prepare and the training package both lock."""
    assert lock_path(tmp_path / "smollm2-135m") == tmp_path / ".smollm2-135m.lock"


def _hold(target: Path, journal: Path, name: str, barrier: Barrier) -> None:
    barrier.wait()
    with file_lock(target):
        with journal.open("a") as out:
            out.write(f"{name} in\n")
        time.sleep(HOLD_S)
        with journal.open("a") as out:
            out.write(f"{name} out\n")


def test_two_processes_holding_the_lock_are_serialised(tmp_path: Path) -> None:
    """Two processes released together: one holds the lock while the other waits."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    journal = tmp_path / "journal"
    workers = [context.Process(target=_hold, args=(tmp_path / "model", journal, name, barrier))
               for name in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert [w.exitcode for w in workers] == [0, 0]
    lines = journal.read_text().splitlines()
    first, second = lines[0].split()[0], lines[2].split()[0]
    assert lines == [f"{first} in", f"{first} out", f"{second} in", f"{second} out"]


def test_lock_excludes_a_plain_flock_on_the_same_file(tmp_path: Path) -> None:
    """Code still locking the file with fcntl.flock (the training package) excludes us too."""
    target = tmp_path / "smollm2-135m-eagle"
    with lock_path(target).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(Timeout), file_lock(target, timeout_s=0.2):
            pass
        fcntl.flock(handle, fcntl.LOCK_UN)
    with file_lock(target, timeout_s=0.2):
        pass
