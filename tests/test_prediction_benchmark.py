"""benchmarks/prediction.py's pure parts: its files pass the strict checks, its arithmetic.

The benchmark itself runs vLLM for hours; these check, without running anything, that the
tune and study files it writes are valid and expand into the runs it means, and that the
split, the times and the residual lines are right.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from specdec.serialization import structure
from specdec.study import ItemStatus, StudyConfig, expand_study
from specdec.tune import plan_tune, tune_from_mapping

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    """The benchmark module, imported as its script imports (benchmarks/ on sys.path)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import prediction

        yield prediction
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        sys.modules.pop("prediction", None)


def test_the_held_out_set_is_the_other_categories(bench: ModuleType) -> None:
    categories = bench.sample_categories()
    assert categories[:3] == ["code_editing", "extraction", "summarization"]
    assert bench.held_out(categories, bench.TUNED) == [
        "translation", "math", "writing", "multi_turn"]
    with pytest.raises(SystemExit, match="unknown categories"):
        bench.held_out(categories, ["poetry"])
    with pytest.raises(SystemExit, match="leave at least one out"):
        bench.held_out(categories, categories)


def test_its_tune_and_study_files_are_valid_and_mean_what_it_says(bench: ModuleType) -> None:
    """The tune file: calibration runs only (confirm 0), on the tuning categories; the study:
    a baseline and every method at every k on the held-out categories, one request at a
    time, float32."""
    args = bench.parse([])
    methods = ["ngram", "draft_model"]
    tune = tune_from_mapping(bench.tune_file(args, methods))
    plan = plan_tune(tune)
    assert tune.confirm == 0
    assert tune.benchmark.categories == bench.TUNED
    assert len(plan.first) == 2 + 2 * 3
    held = bench.held_out(bench.sample_categories(), args.tune_categories)
    study = structure(bench.study_file(args, methods, held), StudyConfig)
    items = expand_study(study)
    assert len(items) == 1 + 2 * 8
    assert all(i.experiment["engine"]["dtype"] == "float32" for i in items)
    assert all(i.experiment["mode"] == "sequential" for i in items)
    assert {i.experiment["benchmark"]["categories"] == held for i in items} == {True}


def test_times_come_from_the_batch_index(bench: ModuleType) -> None:
    """Finished items only, end minus start, start-ups included."""
    items = [ItemStatus("a", "a", "none", "m", 0, {}, "done", None,
                        "2026-12-01T10:00:00+00:00", "2026-12-01T10:01:30+00:00"),
             ItemStatus("b", "b", "ngram", "m", 0, {}, "failed", "x",
                        "2026-12-01T10:01:30+00:00", "2026-12-01T10:02:00+00:00")]
    assert bench.item_seconds(items) == {"a": 90.0}


def test_residual_lines_say_how_far_and_whether_within_target(bench: ModuleType) -> None:
    line = bench.residual_line("ngram", 3, (1.5, None), (1.65, (1.5, 1.8)))
    assert line == ("  ngram        k=3: predicted 1.500, measured 1.650 [1.500, 1.800], "
                    "residual +10.0% ok")
    line = bench.residual_line("draft_model", 2, (0.8, 0.85), (0.7, None))
    assert line.endswith("predicted 0.800 (to 0.850), measured 0.700, residual -12.5% MISSES "
                         "the 10% target")
    assert "no residual" in bench.residual_line("ngram", 1, (None, None), (1.2, None))
    assert bench.worst([0.05, -0.08, 0.01]) == 0.08
    assert bench.worst([]) is None
