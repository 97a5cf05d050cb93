"""Runs as one pandas DataFrame: :func:`load_runs`.

A study's folders hold many runs; an analysis wants them side by side, one row per
turn, each row carrying what distinguishes its run (setting, repeat, strategy, model
and the swept values the study labelled it with).  The runs are found as reports find
them (:func:`specdec.report.collect_runs`: batch folders through their ``batch.json``,
run folders as they are) and read through :func:`specdec.run_folder.to_dataframe`.

pandas is optional: without it :func:`load_runs` raises a :class:`SpecdecError`
saying how to install it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from specdec.errors import SpecdecError

if TYPE_CHECKING:
    import pandas as pd

RUN_COLUMNS = ("setting", "repeat", "strategy", "model", "folder")
"""The columns every row starts with, before its labels and its turn's fields."""


def load_runs(*paths: Path | str | Iterable[Path | str]) -> pd.DataFrame:
    """Every turn of every finished run under ``paths``, one row each.

    ``paths`` are batch folders (their finished items; failed ones are left out) and
    run folders, given separately or as one list.  Columns: :data:`RUN_COLUMNS`, then
    the setting's labels (a study's swept keys, such as
    ``strategy.num_speculative_tokens``; missing where a run has no such label), then
    :func:`specdec.run_folder.to_dataframe`'s (``id``, ``category``, ``turn``,
    ``error``, the turn record's fields, ``spec.*``).

    Raises:
        SpecdecError: pandas is not installed, or a folder holds no finished run.
    """
    try:
        import pandas as pd  # noqa: PLC0415 - optional
    except ImportError as exc:
        msg = "specdec.load_runs needs pandas: pip install pandas (or specdec-study[dev])"
        raise SpecdecError(msg) from exc
    from specdec import run_folder  # noqa: PLC0415
    from specdec.report import collect_runs  # noqa: PLC0415 - scipy only when used

    folders = [Path(p) for p in _flatten(paths)]
    if not folders:
        raise SpecdecError("specdec.load_runs: give at least one batch or run folder")
    runs, _failed, _threshold = collect_runs(folders)
    frames = []
    for run in runs:
        turns = run_folder.to_dataframe(run.folder)
        clash = sorted((set(RUN_COLUMNS) | set(run.labels)) & set(turns.columns))
        if clash:
            msg = f"{run.folder}: labels {clash} have the names of turn columns; rename them"
            raise SpecdecError(msg)
        front = {"setting": run.setting, "repeat": run.repeat, "strategy": run.strategy,
                 "model": run.config.model, "folder": str(run.folder), **run.labels}
        for position, (name, value) in enumerate(front.items()):
            turns.insert(position, name, [value] * len(turns))
        frames.append(turns)
    return pd.concat(frames, ignore_index=True, sort=False)


def _flatten(paths: Iterable[Path | str | Iterable[Path | str]]) -> list[Path | str]:
    flat: list[Path | str] = []
    for path in paths:
        if isinstance(path, Path | str):
            flat.append(path)
        else:
            flat.extend(path)
    return flat
