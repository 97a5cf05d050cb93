"""A report's files: ``report.md``, ``report.json`` and the PNG plots.

:mod:`specdec.report` builds the comparison (data only); this module renders
it, and :mod:`specdec.plots` draws it.  Numbers are shown with
:mod:`specdec.formatting`, as in the terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from specdec.errors import SpecdecError
from specdec.formatting import MISSING, median_spread, number
from specdec.report import OVERALL, Comparison, Report, Spread
from specdec.serialization import unstructure, write_json
from specdec.study import BASELINE


def _rate(spread: Spread | None) -> str:
    if spread is None:
        return MISSING
    return median_spread(spread.median, spread.spread, spread.n)


def _speedup_section(report: Report, index: dict[tuple[str, str], Comparison]) -> list[str]:
    names = [s.name for s in report.settings if s.strategy != BASELINE]
    lines = ["## Speedup by category", "",
             "| category | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for category in report.categories:
        cells = []
        for name in names:
            comp = index.get((name, category))
            cells.append(MISSING if comp is None else
                         f"{number(comp.speedup_spec_bench, suffix='x')} / "
                         f"{number(comp.speedup_throughput, suffix='x')}")
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return [*lines, "", "Each cell: Spec-Bench speedup / throughput speedup.", ""]


def _settings_section(report: Report, index: dict[tuple[str, str], Comparison]) -> list[str]:
    lines = ["## Settings (overall)", "",
             ("| setting | baseline | tokens/s per request | throughput tokens/s | "
              "acceptance rate | mean acceptance length | Spec-Bench mean accepted tokens |"),
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for setting in report.settings:
        comp = index[(setting.name, OVERALL)]
        lines.append(
            f"| {setting.name} | {report.baselines.get(setting.name, MISSING)} | "
            f"{_rate(comp.tokens_per_s_mean)} | {_rate(comp.throughput)} | "
            f"{number(comp.acceptance_rate)} | {number(comp.mean_acceptance_length)} | "
            f"{number(comp.spec_bench_accepted_tokens)} |"
        )
    lines += ["", "## Best setting per category", "",
              ("Fastest median per-request tokens/s; within the noise margin the simpler "
               "setting (baseline, then fewer speculative tokens) is preferred."), "",
              "| category | best | fastest | margin |", "| --- | --- | --- | --- |"]
    lines += [f"| {category} | {best['setting']} | {best['fastest']} | {best['margin']} |"
              for category, best in report.best.items()]
    return [*lines, ""]


def _lossless_section(report: Report) -> list[str]:
    lines = ["## Lossless check", "",
             (f"Greedy outputs compared token by token with the baseline's. A divergence "
              f"where the baseline's top-2 log-probability margin is at most {report.threshold}"
              " is a near-tie flip; above it, a real mismatch (a failure)."), "",
             ("| setting | turns | equal | near-tie flips | mismatches | unclassified | "
              "not compared | result |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, result in report.lossless.items():
        lines.append(f"| {name} | {result.turns} | {result.equal} | {result.near_tie} | "
                     f"{result.mismatch} | {result.unclassified} | {result.not_compared} | "
                     f"{result.verdict} |")
    for name, result in report.lossless.items():
        shown = [c for c in result.comparisons if c.position is not None][:10]
        if shown:
            lines += ["", f"### Divergences of {name}", ""]
            lines += [f"- `{c.id}` turn {c.turn + 1}, token {c.position}, {c.status}, margin "
                      f"{number(c.baseline_margin, 3)}: baseline `{c.baseline_text!r}` vs "
                      f"`{c.candidate_text!r}`" for c in shown]
    return [*lines, ""]


def render_markdown(report: Report, plots: Sequence[Path]) -> str:
    """The text of ``report.md``."""
    index = {(c.setting, c.category): c for c in report.comparisons}
    lines = ["# specdec report", "",
             ("Speedup is shown two ways: **Spec-Bench** (ratio of mean per-request tokens/s) "
              "and **throughput** (ratio of total output tokens/s). Medians over repeats; "
              "± is half the relative spread. Definitions: docs/metrics.md."), ""]
    lines += _speedup_section(report, index)
    lines += _settings_section(report, index)
    lines += _lossless_section(report)
    if report.failed:
        lines += ["## Failed runs", "", *(f"- {f}" for f in report.failed), ""]
    if plots:
        lines += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in plots)]
    return "\n".join(lines) + "\n"


def write_report(report: Report, out: Path) -> list[Path]:
    """Write ``report.md``, ``report.json`` and the plots into ``out``.

    Raises:
        SpecdecError: ``out`` is a file.
    """
    from specdec.plots import draw_all  # noqa: PLC0415 - matplotlib only when writing

    if out.exists() and not out.is_dir():
        msg = f"{out} is a file, not a folder: choose another report folder (--output DIR)"
        raise SpecdecError(msg)
    out.mkdir(parents=True, exist_ok=True)
    plots = draw_all(report, out)
    (out / "report.md").write_text(render_markdown(report, plots), encoding="utf-8")
    write_json(out / "report.json", {
        "comparisons": unstructure(report.comparisons),
        "baselines": report.baselines,
        "best": report.best,
        "lossless": {k: {**unstructure(v), "passed": v.passed}
                     for k, v in report.lossless.items()},
        "failed": list(report.failed),
        "near_tie_threshold": report.threshold,
    })
    return [out / "report.md", out / "report.json", *plots]
