"""specdec.load_runs: the runs of batch and run folders as one DataFrame, one row per turn."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import specdec
from specdec import run_folder
from specdec.errors import SpecdecError
from specdec.frames import RUN_COLUMNS
from specdec.serialization import write_json
from specdec.study import BatchIndex, ItemStatus, read_index

from .test_report_html import make_batch


def _turns(folder: Path) -> int:
    return sum(len(r.turns) for r in run_folder.read_records(folder))


def test_a_batch_gives_every_turn_with_its_setting(tmp_path: Path) -> None:
    """Rows: every turn of every finished item; columns: the run's, then the turn's."""
    batch = make_batch(tmp_path)
    frame = specdec.load_runs(batch)
    assert len(frame) == _turns(batch / "none") + _turns(batch / "ngram")
    assert tuple(frame.columns[:len(RUN_COLUMNS)]) == RUN_COLUMNS
    assert set(frame["setting"]) == {"none", "ngram"}
    assert set(frame["strategy"]) == {"none", "ngram"}
    assert (frame["model"] == "smollm2-135m").all()
    assert {"id", "category", "turn", "output_tokens", "spec.num_accepted_tokens"} <= set(
        frame.columns)
    ngram = frame[frame["setting"] == "ngram"]
    assert set(ngram["folder"]) == {str(batch / "ngram")}


def test_labels_become_columns_and_failed_items_are_left_out(tmp_path: Path) -> None:
    """A study's swept keys are columns (missing where a run has none); items that did not
    finish give no rows."""
    batch = make_batch(tmp_path)
    index = read_index(batch)
    items = [ItemStatus(i.name, i.setting, i.strategy, i.model, i.repeat,
                        {"strategy.num_speculative_tokens": 3} if i.name == "ngram" else {},
                        status=i.status) for i in index.items]
    items.append(ItemStatus("broken", "broken", "ngram", "smollm2-135m", 0, {},
                            status="failed", error="boom"))
    write_json(batch / "batch.json", BatchIndex("batch", tuple(items)))
    frame = specdec.load_runs(batch)
    assert "broken" not in set(frame["setting"])
    by_setting = frame.groupby("setting")["strategy.num_speculative_tokens"].first()
    assert by_setting["ngram"] == 3
    assert frame[frame["setting"] == "none"]["strategy.num_speculative_tokens"].isna().all()


def test_run_folders_and_lists_of_them(tmp_path: Path) -> None:
    """Run folders load alone, named by their folder; a list counts as its paths."""
    batch = make_batch(tmp_path)
    one = specdec.load_runs(batch / "ngram")
    assert set(one["setting"]) == {"ngram"}
    assert set(one["repeat"]) == {0}
    both = specdec.load_runs([batch / "none", str(batch / "ngram")])
    assert len(both) == len(one) + _turns(batch / "none")


def test_errors_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No folder, a folder without a finished run, and pandas missing: each a SpecdecError."""
    with pytest.raises(SpecdecError, match="at least one batch or run folder"):
        specdec.load_runs()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecdecError, match="empty"):
        specdec.load_runs(tmp_path / "empty")
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(SpecdecError, match="needs pandas: pip install pandas"):
        specdec.load_runs(tmp_path)
