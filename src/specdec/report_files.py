"""A report's files: ``report.md``, ``report.json``, ``report.html`` and the PNG plots.

:mod:`specdec.report` builds the comparison (data only); this module renders
it, :mod:`specdec.plots` draws it and :mod:`specdec.report_html` lays it out as
one self-contained page.  Numbers are shown with
:mod:`specdec.formatting`, as in the terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from specdec import concurrency
from specdec.concurrency import SweepLine
from specdec.errors import SpecdecError
from specdec.formatting import MISSING, median_spread, number
from specdec.intervals import CONFIDENCE, METHOD, RESAMPLES, SEED
from specdec.metrics import Slo
from specdec.report import OVERALL, Comparison, Report, Spread
from specdec.report_text import interval_kinds, margin_source_text, speedup_cell, with_interval
from specdec.serialization import unstructure, write_json


def _rate(spread: Spread | None) -> str:
    if spread is None:
        return MISSING
    return median_spread(spread.median, spread.spread, spread.n)


def _speedup_section(report: Report, index: dict[tuple[str, str], Comparison]) -> list[str]:
    shown = report.shown()
    lines = ["## Speedup by category", "",
             "| category | " + " | ".join(s.display_name() for s in shown) + " |",
             "| --- |" + " --- |" * len(shown)]
    for category in report.categories:
        cells = []
        for setting in shown:
            comp = index.get((setting.name, category))
            cells.append(MISSING if comp is None else " / ".join(speedup_cell(comp)))
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    kinds = ", ".join(f'"{k}"' for k in interval_kinds(report)) or "none"
    return [*lines, "",
            (f"Each cell: Spec-Bench speedup / throughput speedup, each with its "
             f"{CONFIDENCE:.0%} confidence interval (paired bootstrap over prompts, {METHOD}, "
             f'{RESAMPLES} resamples, seed {SEED}; kinds here: {kinds}). "within-run only" '
             "intervals see one run of each setting and miss the drift between runs."), ""]


def _settings_section(report: Report, index: dict[tuple[str, str], Comparison]) -> list[str]:
    lines = ["## Settings (overall)", "",
             ("| setting | baseline | tokens/s per request | throughput tokens/s | "
              "acceptance rate | mean acceptance length | Spec-Bench mean accepted tokens |"),
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for setting in report.settings:
        comp = index[(setting.name, OVERALL)]
        rate = with_interval(comp.acceptance_rate, comp.acceptance_rate_interval, suffix="")
        length = with_interval(comp.mean_acceptance_length,
                               comp.mean_acceptance_length_interval, suffix="")
        lines.append(
            f"| {setting.display_name()} | {report.baselines.get(setting.name, MISSING)} | "
            f"{_rate(comp.tokens_per_s_mean)} | {_rate(comp.throughput)} | {rate} | {length} | "
            f"{number(comp.spec_bench_accepted_tokens)} |"
        )
    lines += ["", "## Best setting per category", "",
              ("A setting beats its baseline only when its Spec-Bench speedup interval lies "
               "above 1; among those (and the baselines) whose intervals overlap the fastest "
               "one's, the simplest is named (baseline, then fewer speculative tokens, smaller "
               "swept values). See docs/studies.md."), "",
              "| category | best | its speedup | fastest | fastest's speedup |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {category} | {best['setting']} | {best['speedup']} | {best['fastest']} | "
              f"{best['fastest_speedup']} |"
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
        notes = result.sampled_notes()
        if notes:
            lines += ["", f"{name}: {notes[0]}"]
        if notes[1:]:
            lines += ["", *(f"- {note}" for note in notes[1:])]
    for name, result in report.lossless.items():
        shown = [c for c in result.comparisons if c.position is not None][:10]
        if shown:
            lines += ["", f"### Divergences of {name}", ""]
            if result.scoring_engine is not None:
                lines += [f"Margins from {margin_source_text(result)}.", ""]
            lines += [f"- `{c.id}` turn {c.turn + 1}, token {c.position}, {c.status}, margin "
                      f"{number(c.baseline_margin, 3)}"
                      + (f" ({c.margin_source})" if c.margin_source else "")
                      + (f" ({c.reason})" if c.reason else "")
                      + f": baseline `{c.baseline_text!r}` vs `{c.candidate_text!r}`"
                      for c in shown]
    return [*lines, ""]


def render_markdown(report: Report, plots: Sequence[Path],
                    sweep: Sequence[SweepLine] = (), slo: Slo | None = None) -> str:
    """The text of ``report.md``.

    ``sweep``: the concurrency sweep's lines, with goodput under ``slo``
    (:func:`specdec.concurrency.concurrency_lines`).
    """
    index = {(c.setting, c.category): c for c in report.comparisons}
    lines = ["# specdec report", "",
             ("Speedup is shown two ways: **Spec-Bench** (ratio of mean per-request tokens/s) "
              "and **throughput** (ratio of total output tokens/s), each with a confidence "
              "interval; with repeats, the ratio of the repeats' means. Tokens/s are medians "
              "over repeats; ± is half the relative spread. Definitions: docs/metrics.md."), ""]
    if report.warnings:
        lines += ["## Warnings", "", *(f"- **{w}**" for w in report.warnings), ""]
    lines += _speedup_section(report, index)
    lines += _settings_section(report, index)
    lines += _lossless_section(report)
    lines += concurrency.markdown(sweep, slo)
    if report.failed:
        lines += ["## Failed runs", "", *(f"- {f}" for f in report.failed), ""]
    if plots:
        lines += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in plots)]
    return "\n".join(lines) + "\n"


def write_report(report: Report, out: Path, slo: Slo | None = None) -> list[Path]:
    """Write ``report.md``, ``report.json``, ``report.html`` and the plots into ``out``.

    Where ``engine.concurrency`` was swept, report.md and report.json gain the
    concurrency sweep (:mod:`specdec.concurrency`), with goodput under ``slo``.

    Raises:
        SpecdecError: ``out`` is a file.
    """
    from specdec.plots import draw_all  # noqa: PLC0415 - matplotlib only when writing
    from specdec.report_html import render_html  # noqa: PLC0415 - jinja2 only when writing

    if out.exists() and not out.is_dir():
        msg = f"{out} is a file, not a folder: choose another report folder (--output DIR)"
        raise SpecdecError(msg)
    out.mkdir(parents=True, exist_ok=True)
    sweep = concurrency.concurrency_lines(report, slo)
    plots = draw_all(report, out, sweep, slo)
    (out / "report.md").write_text(render_markdown(report, plots, sweep, slo), encoding="utf-8")
    write_json(out / "report.json", {
        **({"concurrency_sweep": unstructure(sweep)} if sweep else {}),
        "comparisons": unstructure(report.comparisons),
        "baselines": report.baselines,
        "best": report.best,
        "lossless": {k: {**unstructure(v), "passed": v.passed}
                     for k, v in report.lossless.items()},
        "failed": list(report.failed),
        "near_tie_threshold": report.threshold,
        "warnings": list(report.warnings),
    })
    (out / "report.html").write_text(render_html(report, plots, sweep, slo), encoding="utf-8")
    return [out / "report.md", out / "report.json", out / "report.html", *plots]
