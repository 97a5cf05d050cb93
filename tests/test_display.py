"""Terminal output: tables readable at 80 columns without cutting a name, batch progress."""

from __future__ import annotations

import re
import subprocess
import types
from collections.abc import Callable, Iterable
from io import StringIO
from pathlib import Path

import orjson
import pytest
from rich.console import Console
from rich.table import Table

from specdec import display, models
from specdec.config import load_config
from specdec.display import (
    SUMMARY_HEADERS,
    BatchCounter,
    BatchProgress,
    Column,
    column_groups,
    fit_widths,
    record_lines,
)
from specdec.formatting import number
from specdec.registry import PluginInfo
from specdec.report import build_report
from specdec.report_text import speedup_cell, with_interval
from specdec.runner import RunResult, run_experiment
from specdec.serialization import write_json
from specdec.study import BatchIndex, BatchItem, ItemStatus, run_batch

from .test_runner import StandInEngine

CATEGORIES = ("multilingual_translation", "retrieval_augmented_generation", "code_editing",
              "mathematical_reasoning", "summarization")
LONG_SETTING = "draft_model__num_speculative_tokens=3__r2"
HOME = "/home/someone/.cache/specdec"


@pytest.fixture(autouse=True)
def _reset_engine() -> None:
    StandInEngine.reset()


def _render(monkeypatch: pytest.MonkeyPatch, width: int, show: Callable[[], object]) -> str:
    """What ``show`` prints on stdout when it is not a terminal, ``width`` columns wide."""
    out = StringIO()
    monkeypatch.setattr(display, "stdout", Console(file=out, width=width, force_terminal=False))
    show()
    return out.getvalue()


def _readable(text: str, names: Iterable[str], width: int = 80) -> None:
    """No ellipsis; every name whole on one line; no line longer than ``width`` but one
    holding a single word longer than that (a path is never broken)."""
    assert "…" not in text
    for name in names:
        assert name in text, f"{name!r} is cut or folded:\n{text}"
    for line in text.splitlines():
        assert len(line) <= width or " " not in line.strip(), line


def _benchmark(tmp_path: Path) -> Path:
    path = tmp_path / "questions.jsonl"
    lines = [orjson.dumps({"question_id": f"{category}-{n}", "category": category,
                           "turns": [f"Question {n} about {category}?"]})
             for category in CATEGORIES for n in (1, 2)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _run(tmp_path: Path, folder: Path, *extra: str) -> RunResult:
    config = load_config(None, [f"benchmark.path={_benchmark(tmp_path)}", "sinks=[json]",
                                *extra])
    result: RunResult = run_experiment(config, folder, engine_factory=StandInEngine)
    return result


def test_summary_at_80_columns_cuts_no_category(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Piped, the run summary keeps every category name and its output folder whole."""
    result = _run(tmp_path, tmp_path / "results" / "20261202-044100-ngram", "strategy.name=ngram")
    text = _render(monkeypatch, 80, lambda: display.print_summary(result))
    _readable(text, [*CATEGORIES, "overall", str(result.output_dir)])
    for header in SUMMARY_HEADERS:
        # Headers wrap between their words, never inside one.
        assert all(word in text for word in header.split()), header
    # Every column is still there: each row's figures follow its category in some table.
    for category in CATEGORIES:
        group = result.summary.categories[category]
        rows = [line for line in text.splitlines() if category in line]
        assert any(str(group.output_tokens) in row for row in rows)
        assert any(number(group.tokens_per_s_mean, 1) in row for row in rows)
    assert text.count("┃ category") == 2  # split in two tables, each with the categories
    medium = _render(monkeypatch, 110, lambda: display.print_summary(result))
    _readable(medium, [*CATEGORIES, "overall", str(result.output_dir)], width=110)
    assert medium.count("┃ category") == 1  # one table: its headers wrap, no name does


def test_summary_on_a_wide_terminal_looks_as_before(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Where it fits, the summary is the plain rich table it always was, to the character."""
    result = _run(tmp_path, tmp_path / "run", "strategy.name=ngram")
    text = _render(monkeypatch, 250, lambda: display.print_summary(result))
    config, summary = result.config, result.summary
    table = Table(title=f"{config.strategy.name} on {config.model} ({config.mode}) -> "
                        f"{result.output_dir}")
    for header in SUMMARY_HEADERS:
        table.add_column(header, justify="left" if header == "category" else "right")
    for name, group in summary.categories.items():
        table.add_row(*display._row(name, group, group.spec))
    table.add_section()
    table.add_row(*display._row("overall", summary.overall,
                                summary.engine_spec or summary.overall.spec))
    before = StringIO()
    Console(file=before, width=250, force_terminal=False).print(table)
    assert text.startswith(before.getvalue())


def test_models_list_at_80_columns_keeps_paths_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """`specdec models list` piped: each model's name and path whole, each on one line."""
    monkeypatch.setenv("SPECDEC_HOME", HOME)
    monkeypatch.setattr(models, "HEADS", Path(HOME) / "no-heads-shipped")
    text = _render(monkeypatch, 80, display.print_models)
    paths = [str(model.path) for model in models.BUNDLED.values()]
    assert f"{HOME}/models/smollm2-135m-eagle3" in paths
    _readable(text, [*models.BUNDLED, *paths])
    # The description wraps between words: all of its words are there, in order.
    for model in models.BUNDLED.values():
        assert model.description in " ".join(text.split())
    wide = _render(monkeypatch, 250, display.print_models)
    assert re.search(r"┃ name +┃ prepared ┃ path +┃ description +┃", wide)


def test_models_list_says_a_head_is_shipped(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    """A head the package ships is listed as shipped, at its package folder."""
    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path / "home"))
    folder = tmp_path / "heads" / models.EAGLE_ALIAS
    folder.mkdir(parents=True)
    (folder / models.CHECKSUMS).write_text("")
    monkeypatch.setattr(models, "HEADS", tmp_path / "heads")
    text = _render(monkeypatch, 250, display.print_models)
    row = next(line for line in text.splitlines() if f" {models.EAGLE_ALIAS} " in line)
    assert "shipped" in row
    assert str(folder) in row


class _Registry:
    def __init__(self, infos: list[PluginInfo]) -> None:
        self._infos = infos

    def infos(self) -> list[PluginInfo]:
        return self._infos


def test_plugins_at_80_columns_keep_names_packages_versions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`specdec plugins` piped: long plugin, package and version names and a long error."""
    error = ("ImportError: cannot import name 'SuffixProposer' from "
             "'vllm.v1.spec_decode.suffix_decoding' (is vLLM 0.32 installed?)")
    infos = [
        PluginInfo("benchmark", "retrieval_augmented_generation", "x:Y",
                   "specdec-retrieval-augmented-benchmarks", "0.3.0.dev17+g1a2b3c4",
                   builtin=False, enabled=True),
        PluginInfo("strategy", "suffix_lookup_with_tree", "x:Z", "specdec-suffix-lookup",
                   "1.0.0rc2", builtin=False, enabled=True, error=error),
    ]
    monkeypatch.setattr("specdec.registry.all_registries", lambda: (_Registry(infos),))
    monkeypatch.setattr("specdec.commands.command_plugins", _Registry([]))
    monkeypatch.setattr(display, "stderr", Console(file=StringIO(), force_terminal=False))
    text = _render(monkeypatch, 80, display.print_plugins)
    words = [word for info in infos for word in (info.kind, info.name, info.package,
                                                  info.version)]
    _readable(text, words + [word for word in error.split() if len(word) < 30])
    assert "'vllm.v1.spec_decode.suffix_decoding'" in text


def _report_batch(tmp_path: Path) -> Path:
    """A baseline and a faster setting with a long name, over five long category names."""
    base = tmp_path / "batch"
    StandInEngine.speed_by_tokens = {3: 1.5}
    items = []
    for name, setting, extra in (
            ("none", "none", ["strategy.name=none"]),
            ("ngram-k3", LONG_SETTING,
             ["strategy.name=ngram", "strategy.num_speculative_tokens=3"])):
        _run(tmp_path, base / name, *extra)
        items.append(ItemStatus(name, setting, extra[0].split("=")[1], "smollm2-135m", 0, {},
                                status="done"))
    write_json(base / "batch.json", BatchIndex("batch", tuple(items)))
    return base


def test_report_at_80_columns_keeps_settings_categories_and_intervals(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report table piped: setting and category names whole, each interval on one line."""
    report = build_report([_report_batch(tmp_path)])
    assert set(CATEGORIES) <= set(report.categories)
    text = _render(monkeypatch, 80, lambda: display.print_report(report))
    cells = [line for comp in report.comparisons for line in speedup_cell(comp)]
    assert cells
    _readable(text, [LONG_SETTING, *report.categories, *cells])
    assert "lossless" in text


def test_report_ends_with_the_verdict_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Last comes the answer: the setting's overall speedups and acceptance with intervals,
    its lossless verdict, and the best setting overall; the baseline has no row."""
    report = build_report([_report_batch(tmp_path)])
    text = _render(monkeypatch, 80, lambda: display.print_report(report))
    verdict = text[text.index("verdict (overall"):]
    overall = next(c for c in report.comparisons
                   if c.setting == LONG_SETTING and c.category == "overall")
    acceptance = with_interval(overall.mean_acceptance_length,
                               overall.mean_acceptance_length_interval, suffix="")
    _readable(verdict, [LONG_SETTING, *speedup_cell(overall), acceptance,
                        report.lossless[LONG_SETTING].verdict])
    assert not re.search(r"^\W*none\b", verdict, re.MULTILINE)  # no baseline row
    best = report.best["overall"]
    assert f"verdict: {best['setting']} {best['speedup']} is the best setting overall" in (
        " ".join(verdict.split()))


def test_fit_widths_narrows_the_widest_first_never_below_a_word() -> None:
    """Long cells wrap first; no column gets narrower than its longest word; None if the
    words alone need more room than there is."""
    # 40 columns hold 30 characters of text beside three columns' padding and rules.
    assert fit_widths([20, 12, 5], [3, 3, 3], 40) == [13, 12, 5]
    assert fit_widths([30, 10, 15], [30, 4, 6], 50) == [30, 4, 6]
    assert fit_widths([30, 10], [30, 4], 80) == [30, 10]
    assert fit_widths([10, 10], [10, 10], 26) is None


def test_column_groups_repeat_the_keys_and_keep_order() -> None:
    """A table too wide is split in order, each part with the key column first."""
    groups = column_groups([30, 8, 8, 8], [30, 8, 8, 8], 1, 60)
    assert groups == [([0, 1, 2], [30, 8, 8]), ([0, 3], [30, 8])]
    assert column_groups([30, 8], [30, 8], 1, 60) == [([0, 1], [30, 8])]
    # A column that does not fit even beside the keys alone: no split can show it whole.
    assert column_groups([30, 50], [30, 50], 1, 60) is None


def test_record_lines_show_each_cell_under_its_row() -> None:
    """Records: the keys, then one line per other column, wrapped between words."""
    path = f"{HOME}/models/smollm2-135m-eagle3-trained-on-every-question-of-spec-bench"
    lines = record_lines("bundled models", [Column("name"), Column("path"), Column("about")],
                         [("eagle3", path, "a head\ntwo lines"), None], 1, 40)
    assert lines == ["bundled models", "eagle3", "  path:", f"    {path}", "  about: a head",
                     "    two lines"]


def _clock(times: list[float]) -> Callable[[], float]:
    """A clock reading ``times`` in turn, then staying at the last."""
    now = iter(times)
    last = [times[0]]

    def read() -> float:
        last[0] = next(now, last[0])
        return last[0]

    return read


def test_batch_counter_extrapolates_items_not_started() -> None:
    """Three items: the first's total counts for the two not started; the time left is
    the requests left at the rate so far, start-up included."""
    counter = BatchCounter(3, _clock([0.0, 10.0, 100.0, 100.0]))
    counter.update("a", 0, 10)
    assert (counter.done, counter.total, counter.estimated) == (0, 30, True)
    assert counter.seconds_left() is None  # nothing run yet: no rate (clock 10)
    counter.update("a", 5, 10)
    assert counter.seconds_left() == pytest.approx(25 * 100 / 5)  # clock 100
    counter.update("a", 10, 10)
    counter.item_ended("a")
    counter.update("b", 0, 20)
    # Known: 10 + 20; the third item counts as their mean, 15.
    assert (counter.done, counter.total, counter.items_done) == (10, 45, 1)
    assert counter.seconds_left() == pytest.approx(35 * 100 / 10)  # clock 100


def test_batch_counter_counts_earlier_work_as_done_but_not_in_the_rate() -> None:
    """A resumed batch: a finished item and a half-done one count as done; only the
    requests this call runs set the rate."""
    counter = BatchCounter(3, _clock([0.0, 1.0, 50.0]))
    counter.finished_before("a", 10)
    counter.update("b", 4, 10)
    assert (counter.done, counter.total, counter.items_done) == (14, 30, 1)
    assert counter.seconds_left() is None  # clock 1: the 4 requests were run before
    counter.update("b", 6, 10)
    assert counter.seconds_left() == pytest.approx((30 - 16) * 50 / 2)


def test_batch_counter_drops_what_a_failed_item_will_not_run() -> None:
    """A failed item's unfinished requests leave the total; retried lines are capped."""
    counter = BatchCounter(2, _clock([0.0]))
    counter.update("a", 3, 10)
    counter.item_ended("a")
    assert (counter.total, counter.estimated) == (3 + 10, True)
    counter.update("b", 12, 10)
    assert (counter.done, counter.total, counter.estimated) == (13, 13, False)
    assert BatchCounter(2, _clock([0.0])).total is None


def _finished_item(folder: Path, requests: int) -> None:
    folder.mkdir(parents=True)
    (folder / "responses.jsonl").write_text("{}\n" * requests)
    (folder / "metrics.json").write_text("{}")


def _item(name: str) -> ItemStatus:
    return ItemStatus(name, name, "none", "smollm2-135m", 0, {}, status="done")


def test_batch_progress_counts_finished_items_and_is_silent_off_a_terminal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An item finished earlier counts as done; stderr not a terminal: nothing is drawn."""
    _finished_item(tmp_path / "a", 4)
    err = StringIO()
    monkeypatch.setattr(display, "stderr", Console(file=err, force_terminal=False))
    with BatchProgress(["a", "b"], tmp_path, _clock([0.0, 5.0, 10.0, 20.0])) as bar:
        items, requests = bar.progress.tasks
        assert (items.fields["count"], requests.fields["count"]) == ("1/2", "4/~8")
        assert requests.fields["left"] == "- left"
        bar.update("b", 0, 6)
        bar.update("b", 3, 6)
        assert (requests.description, requests.fields["count"]) == ("requests (b)", "7/10")
        assert requests.fields["left"] == "~0:00:20 left"  # 3 to do, at 3 in 20 s
        bar.item_ended(_item("b"))
        assert (items.completed, items.fields["count"]) == (2, "2/2")
        assert requests.completed == 7
    assert err.getvalue() == ""


def test_batch_progress_draws_on_a_terminal(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the bars show items, requests over the batch and the time left."""
    err = StringIO()
    monkeypatch.setattr(display, "stderr",
                        Console(file=err, force_terminal=True, width=120, color_system=None))
    with BatchProgress(["a", "b"], tmp_path, _clock([0.0, 1.0, 30.0, 30.0])) as bar:
        bar.update("a", 0, 5)
        bar.update("a", 5, 5)
        bar.item_ended(_item("a"))
    shown = err.getvalue()
    assert "configurations" in shown
    assert "1/2" in shown
    assert "5/~10" in shown
    assert "~0:00:30 left" in shown


class _WritesTwoRequests:
    """Stands in for an item's process: writes two finished requests, then has exited."""

    def __init__(self, command: list[str], **_: object) -> None:
        folder = Path(command[command.index("--output-dir") + 1])
        (folder / "responses.jsonl").write_text("{}\n{}\n")
        self.returncode = 0

    def poll(self) -> int:
        return self.returncode


def test_batch_progress_follows_run_batch(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Wired into run_batch as the CLI wires it: a finished item and a run one, counted."""
    base = tmp_path / "batch"
    run_experiment(load_config(None, ["benchmark.limit=2", "sinks=[log]"]), base / "done",
                   engine_factory=StandInEngine)
    monkeypatch.setattr("specdec.executors.process.subprocess",
                        types.SimpleNamespace(Popen=_WritesTwoRequests, STDOUT=subprocess.STDOUT))
    monkeypatch.setattr(display, "stderr", Console(file=StringIO(), force_terminal=False))
    items = [BatchItem(name, name, {"strategy": {"name": "none"}, "benchmark": {"limit": 2}})
             for name in ("done", "todo")]
    with BatchProgress([item.name for item in items], base) as bar:
        assert (bar.counter.items_done, bar.counter.done, bar.counter.total) == (1, 2, 4)
        index = run_batch(items, base, on_item=bar.item_ended, on_progress=bar.update, poll_s=0)
    assert [i.status for i in index.items] == ["done", "done"]
    assert (bar.counter.items_done, bar.counter.done, bar.counter.total) == (2, 4, 4)
    assert not bar.counter.estimated
