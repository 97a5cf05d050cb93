"""report.html: one self-contained page with the verdict, plots, divergences and provenance.

These tests read the page's HTML; ``test_report_browser.py`` renders it in Chromium.
"""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import attrs
import orjson
import pytest

from specdec.config import load_config
from specdec.lossless import LosslessResult, TurnComparison
from specdec.report import Report, build_report
from specdec.report_files import write_report
from specdec.report_html import render_html, split_divergence
from specdec.runner import run_experiment
from specdec.serialization import write_json
from specdec.study import BatchIndex, ItemStatus

from .test_runner import StandInEngine

CATEGORIES = ("code_editing", "math", "writing")
PNG = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """The tags, attributes and text of a page, by tag."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


SETTINGS: tuple[tuple[str, list[str]], ...] = (
    ("none", ["strategy.name=none"]),
    ("ngram", ["strategy.name=ngram", "strategy.num_speculative_tokens=3"]),
)
"""The batch's settings: each item's name and the ``--set`` overrides that make it."""


def make_batch(tmp_path: Path, settings: tuple[tuple[str, list[str]], ...] = SETTINGS,
               speed_by_tokens: dict[int, float] | None = None) -> Path:
    """A finished batch of ``settings`` (by default a baseline and a faster ngram setting)
    run by the stand-in engine, each faster by ``speed_by_tokens`` of its speculative
    tokens (by default 1.5x at 3)."""
    bench = tmp_path / "questions.jsonl"
    bench.write_bytes(b"".join(
        orjson.dumps({"question_id": f"{c}-{n}", "category": c, "turns": [f"Q{n} on {c}?"]})
        + b"\n" for c in CATEGORIES for n in (1, 2, 3)))
    base = tmp_path / "batch"
    StandInEngine.reset()
    StandInEngine.speed_by_tokens = {3: 1.5} if speed_by_tokens is None else speed_by_tokens
    items = []
    for name, extra in settings:
        config = load_config(None, [f"benchmark.path={bench}", "sinks=[json]", *extra])
        run_experiment(config, base / name, engine_factory=StandInEngine)
        items.append(ItemStatus(name, name, extra[0].split("=")[1], "smollm2-135m", 0, {},
                                status="done"))
    write_json(base / "batch.json", BatchIndex("batch", tuple(items)))
    StandInEngine.reset()
    return base


def with_divergence(report: Report, setting: str = "ngram") -> Report:
    """The report with ``setting``'s check holding one near-tie divergence whose text is
    markup."""
    diverged = TurnComparison(
        "math-1", 0, "near_tie", 4, 0.125,
        "The answer is <b>42</b> today", "The answer is 41 today", "scoring pass")
    result = LosslessResult(0.5, 9, 8, 1, 0, 0, 0, 0, (diverged,),
                            scoring_engine={"dtype": "bfloat16", "enforce_eager": True})
    return attrs.evolve(report, lossless={setting: result})


def test_split_divergence_marks_the_diverging_word() -> None:
    """Shared prefix, the diverging text to the end of its word, then the rest."""
    assert split_divergence("the cat sat", "the car sat") == ("the ca", "t", " sat")
    assert split_divergence("one two", "one three") == ("one t", "wo", "")
    assert split_divergence("same", "same") == ("same", "", "")
    assert split_divergence("short", "shorter") == ("short", "", "")
    assert split_divergence("longer", "long") == ("long", "er", "")


def test_report_html_is_written_beside_the_markdown(tmp_path: Path) -> None:
    """write_report writes report.html and lists it among its files."""
    report = build_report([make_batch(tmp_path)])
    files = write_report(report, tmp_path / "out")
    assert tmp_path / "out" / "report.html" in files
    assert (tmp_path / "out" / "report.html").read_text(encoding="utf-8").startswith(
        "<!DOCTYPE html>")


def test_report_html_is_self_contained_with_every_section(tmp_path: Path) -> None:
    """No address outside the file; plots inline as real PNGs; verdict, categories,
    acceptance, lossless and one provenance row per run."""
    report = build_report([make_batch(tmp_path)])
    out = tmp_path / "out"
    write_report(report, out)
    html = (out / "report.html").read_text(encoding="utf-8")
    page = _parse(html)
    for tag, attribute in (("img", "src"), ("script", "src"), ("link", "href"),
                           ("iframe", "src")):
        for found in page.all(tag):
            address = found.get(attribute) or ""
            assert not address or address.startswith("data:"), (tag, address)
    assert "http://" not in html
    assert "https://" not in html
    images = page.all("img")
    plots = sorted(p.stem for p in out.glob("*.png"))
    assert len(images) == len(plots) >= 2
    for image in images:
        data = (image["src"] or "").removeprefix("data:image/png;base64,")
        assert base64.b64decode(data).startswith(PNG)
    tables = {t["id"] for t in page.all("table")}
    assert {"verdict-table", "category-table", "best-table", "acceptance-table",
            "lossless-table", "runs-table"} <= tables
    text = " ".join(" ".join(page.text).split())
    overall = next(c for c in report.comparisons
                   if c.setting == "ngram" and c.category == "overall")
    assert overall.speedup_spec_bench_interval is not None
    low, high = overall.speedup_spec_bench_interval.low, overall.speedup_spec_bench_interval.high
    assert f"{overall.speedup_spec_bench:.2f}x [{low:.2f}, {high:.2f}]" in text
    for category in CATEGORIES:
        assert category in text
    assert "position 1" in text
    assert "position 3" in text
    assert text.count("provenance of ") == len(report.settings)
    assert "vllm" in text
    assert str(tmp_path / "batch" / "ngram") in text


def test_report_html_escapes_outputs_and_marks_both_sides(tmp_path: Path) -> None:
    """An output holding markup is shown as text; both continuations are side by side with
    the diverging word marked."""
    report = with_divergence(build_report([make_batch(tmp_path)]))
    html = render_html(report, [])
    assert "<b>42</b>" not in html
    assert "&lt;b&gt;" in html
    page = _parse(html)
    marks = page.all("mark")
    assert [m["class"] for m in marks] == ["base", "cand"]
    assert '<mark class="base">&lt;b&gt;42&lt;/b&gt;</mark> today' in html
    assert '<mark class="cand">41</mark> today' in html
    assert "math-1, turn 1, token 4" in html
    assert "near-tie, margin 0.125 (scoring pass)" in html
    assert "No plots" in html


@pytest.mark.parametrize("verdict", ["pass", "FAIL"])
def test_report_html_shows_the_lossless_verdict(tmp_path: Path, verdict: str) -> None:
    """The verdict table's lossless column reads the check's verdict, styled by it."""
    report = build_report([make_batch(tmp_path)])
    if verdict == "FAIL":
        failed = LosslessResult(0.5, 9, 8, 0, 1, 0, 0, 0, (
            TurnComparison("math-1", 0, "mismatch", 2, 3.0, "ab", "ac"),))
        report = attrs.evolve(report, lossless={"ngram": failed})
    html = render_html(report, [])
    assert f'class="{verdict}">{verdict}</td>' in html
