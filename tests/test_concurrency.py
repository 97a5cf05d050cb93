"""Concurrency sweeps in the report: points per setting, the crossover, goodput, --slo."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from specdec.cli import main
from specdec.concurrency import CONCURRENCY, concurrency_lines, markdown, parse_slo
from specdec.config import load_config
from specdec.errors import SpecdecError
from specdec.intervals import CROSSED, NO_CROSSOVER
from specdec.metrics import Slo
from specdec.report import build_report
from specdec.report_files import write_report
from specdec.runner import run_experiment
from specdec.serialization import write_json
from specdec.study import BatchIndex, ItemStatus

from .test_runner import StandInEngine

SPEEDS = {1: 1.5, 2: 1.2, 4: 1.0}
"""The stand-in ngram's decoding speed over the baseline's at each concurrency."""


@pytest.fixture(autouse=True)
def _reset_engine() -> None:
    StandInEngine.reset()


def _sweep(base: Path, speeds: dict[int, float] = SPEEDS, label: str = CONCURRENCY) -> Path:
    """A batch folder of baseline and ngram at each concurrency, labelled as a study labels."""
    items = []
    for level, speed in speeds.items():
        for strategy in ("none", "ngram"):
            StandInEngine.speed_by_tokens = {3: speed}
            name = f"{strategy}-c{level}"
            overrides = [f"strategy.name={strategy}", "benchmark.limit=4", "sinks=[log]"]
            if strategy == "ngram":
                overrides.append("strategy.num_speculative_tokens=3")
            run_experiment(load_config(None, overrides), base / name,
                           engine_factory=StandInEngine)
            items.append(ItemStatus(name, f"m__{strategy}__concurrency={level}", strategy,
                                    "smollm2-135m", 0, {label: level}, status="done"))
    write_json(base / "batch.json", BatchIndex("concurrency", tuple(items)))
    return base


def test_each_point_is_compared_with_the_baseline_at_its_concurrency(tmp_path: Path) -> None:
    """One line for ngram, its points sorted, each paired with the baseline at that point."""
    report = build_report([_sweep(tmp_path / "sweep")])
    (line,) = concurrency_lines(report)
    assert [p.concurrency for p in line.points] == [1, 2, 4]
    assert [p.baseline for p in line.points] == [f"m__none__concurrency={c}" for c in (1, 2, 4)]
    # Per-request tokens/s: 6 tokens over TTFT 0.1 s + decode 0.5 s / speed.
    expected = [0.6 / (0.1 + 0.5 / speed) for speed in SPEEDS.values()]
    assert [p.speedup for p in line.points] == pytest.approx(expected, rel=1e-6)
    assert all(p.mean_acceptance_length is not None for p in line.points)
    assert line.crossover is not None
    assert (line.crossover.concurrency, line.crossover.outcome) == (4, CROSSED)
    assert all(p.goodput is None for p in line.points)


def test_no_crossover_in_range_and_a_study_without_the_sweep(tmp_path: Path) -> None:
    """Above 1 at every point: no crossover; no concurrency label: no section at all."""
    report = build_report([_sweep(tmp_path / "fast", {1: 1.5, 8: 1.3})])
    (line,) = concurrency_lines(report)
    assert line.crossover is not None
    assert (line.crossover.concurrency, line.crossover.outcome) == (None, NO_CROSSOVER)
    assert "none in the swept range" in "\n".join(markdown([line]))
    assert markdown([]) == []
    plain = build_report([_sweep(tmp_path / "plain", {1: 1.5, 4: 1.2}, "engine.max_num_seqs")])
    assert concurrency_lines(plain) == ()


def test_goodput_under_an_slo_for_setting_and_baseline(tmp_path: Path) -> None:
    """TPOT 80 ms: the stand-in baseline's 100 ms fails; ngram's 66.7 ms at concurrency 1 meets
    it, its 83.3 ms at 2 does not."""
    base = _sweep(tmp_path / "sweep")
    report = build_report([base])
    slo = Slo(tpot_ms=80)
    (line,) = concurrency_lines(report, slo)
    first, second, _ = line.points
    assert first.goodput is not None
    assert first.baseline_goodput is not None
    assert (first.goodput.good, first.goodput.requests, first.goodput.share) == (4, 4, 1.0)
    assert first.goodput.rate_per_s > 0
    assert (first.baseline_goodput.good, first.baseline_goodput.rate_per_s) == (0, 0.0)
    assert second.goodput is not None
    assert second.goodput.good == 0
    files = write_report(report, base / "report", slo)
    text = (base / "report" / "report.md").read_text()
    assert "## Concurrency sweep" in text
    assert "TPOT 80 ms" in text
    assert "| 1 | 1.38x" in text
    assert "crossover: concurrency 4 (the lowest whose interval no longer lies above 1)" in text
    saved = orjson.loads((base / "report" / "report.json").read_bytes())["concurrency_sweep"]
    assert [p["concurrency"] for p in saved[0]["points"]] == [1, 2, 4]
    assert saved[0]["points"][0]["goodput"]["good"] == 4
    assert base / "report" / "report.md" in files
    plot = base / "report" / "speedup_and_goodput_vs_concurrency.png"
    assert plot in files
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (base / "report" / "report.html").read_text()
    assert "goodput under the SLO" in html
    assert '<h2 id="concurrency">Concurrency sweep</h2>' in html
    assert "<th>baseline goodput</th>" in html
    assert "<td>1.38x [1.38, 1.38]</td>" in html
    assert "crossover: concurrency 4" in html


def test_parse_slo_reads_vllm_bench_serve_spelling() -> None:
    """'ttft:200 tpot:50' as vllm bench serve --goodput writes it, or key_ms=value, commas."""
    assert parse_slo("ttft:200 tpot:50") == Slo(ttft_ms=200, tpot_ms=50)
    assert parse_slo("e2el_ms=1500,tpot=20") == Slo(tpot_ms=20, e2el_ms=1500)
    for bad, words in [("ttft", "is not a limit"), ("itl:20", "is not a limit"),
                       ("ttft:fast", "not a number"), ("ttft:1 ttft_ms:2", "given twice"),
                       ("", "at least one limit"), ("ttft:-5", "--slo:")]:
        with pytest.raises(SpecdecError, match=words):
            parse_slo(bad)


def test_report_command_takes_slo_and_refuses_a_bad_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """specdec report --slo writes goodput; a bad --slo is a clear error, exit 2."""
    base = _sweep(tmp_path / "sweep")
    assert main(["report", str(base), "--slo", "tpot:80"]) == 0
    assert "goodput" in (base / "report" / "report.md").read_text()
    assert main(["report", str(base), "--slo", "latency:80"]) == 2
    assert "'latency:80' is not a limit" in capsys.readouterr().err


def test_a_study_file_sets_its_slo_strictly(tmp_path: Path) -> None:
    """``slo:`` in a study file is read strictly: a number in quotes or no limit is refused."""
    from specdec.errors import ConfigError
    from specdec.study import load_study

    good = tmp_path / "good.yaml"
    good.write_text("sweep: {concurrency: [1, 2]}\nslo: {ttft_ms: 2000, tpot_ms: 150}\n")
    assert load_study(good).slo == Slo(ttft_ms=2000, tpot_ms=150)
    shipped = Path(__file__).parents[1] / "studies" / "concurrency.yaml"
    assert load_study(shipped).slo is not None
    for text, words in [('slo: {ttft_ms: "200"}\n', "expected a number"),
                        ("slo: {}\n", "at least one of"), ("slo: {ttft: 2}\n", "ttft_ms")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=words):
            load_study(bad)
