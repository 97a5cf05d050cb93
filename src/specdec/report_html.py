"""``report.html``: a report as one self-contained page.

Everything the page shows is inside the file: the plots as inline PNG images, the
style and the few lines of script that sort the tables, so it opens from a mail
attachment or an air-gapped machine and looks the same.  It shows what
``report.md`` shows, and more that only a page can: the verdict table first, each
lossless divergence as the two continuations side by side with the diverging text
marked, and the provenance of every run.

The page is rendered by Jinja2 (autoescaping on, so a prompt or an output holding
markup is shown, never run) from ``templates/report.html.j2``; this module prepares
the plain values it shows.  Numbers are formatted by :mod:`specdec.formatting`, as in
the terminal and ``report.md``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from attrs import frozen

from specdec import concurrency, run_folder
from specdec.concurrency import SweepLine
from specdec.formatting import MISSING, number
from specdec.intervals import CONFIDENCE, METHOD, RESAMPLES, SEED
from specdec.lossless import LosslessResult, TurnComparison, common_prefix
from specdec.metrics import Slo
from specdec.provenance import now
from specdec.report import OVERALL, Comparison, Report
from specdec.report_text import interval_kinds, margin_source_text, with_interval

TEMPLATE = "report.html.j2"

PLOT_CAPTIONS = {
    "speedup_by_category": "Speedup over the baseline by category, with 95% intervals",
    "acceptance_by_position": "Share of drafts accepted at each draft position",
    "acceptance_length_histogram": "How many tokens each verify step accepted",
    "throughput_vs_batch_size": "Throughput against the engine's batch limit",
    "acceptance_and_speedup_vs_temperature": "Acceptance and speedup against the temperature, "
                                             "each against the baseline at that temperature",
    "speedup_and_goodput_vs_concurrency": "Speedup against the baseline at each concurrency, "
                                          "with 95% intervals, and goodput under the SLO",
}

PROVENANCE_KEYS = ("started_at", "finished_at", "specdec", "vllm", "torch", "python",
                   "git_revision", "device", "host", "platform", "cpu_count")
"""The provenance fields the runs table shows; the rest is in each run's details."""


@frozen
class Cell:
    """A table cell: its text and, for sorting, the number it stands for."""

    text: str
    sort: float | None = None


@frozen
class Divergence:
    """One diverged turn, split for showing side by side.

    Each side is ``(shared, marked, rest)``: the text both outputs share before the
    divergence, the diverging text (to the end of its word), and what follows.
    """

    where: str
    status: str
    margin: str
    note: str
    baseline: tuple[str, str, str]
    candidate: tuple[str, str, str]


def split_divergence(text: str, other: str) -> tuple[str, str, str]:
    """``text`` as (the prefix it shares with ``other``, the diverging word, the rest).

    The diverging part runs from the first character that differs to the end of
    that word (the next whitespace), so a token's worth of text is marked rather
    than one character; at least one character is marked where there is any.
    """
    shared = common_prefix(text, other)
    end = shared + 1
    while end < len(text) and not text[end].isspace():
        end += 1
    end = min(end, len(text))
    return text[:shared], text[shared:end], text[end:]


def _cell(value: float | None, interval: Any = None, suffix: str = "x") -> Cell:
    return Cell(with_interval(value, interval, suffix=suffix), value)


def _verdict_rows(report: Report, overall: dict[str, Comparison]) -> list[list[Cell]]:
    rows = []
    for setting in report.shown():
        comp = overall.get(setting.name)
        if comp is None:
            continue
        lossless = report.lossless.get(setting.name)
        rows.append([
            Cell(setting.display_name()),
            Cell(report.baselines.get(setting.name, MISSING)),
            _cell(comp.speedup_spec_bench, comp.speedup_spec_bench_interval),
            _cell(comp.speedup_throughput, comp.speedup_throughput_interval),
            _cell(comp.acceptance_rate, comp.acceptance_rate_interval, ""),
            _cell(comp.mean_acceptance_length, comp.mean_acceptance_length_interval, ""),
            Cell(MISSING if lossless is None else lossless.verdict),
        ])
    return rows


def _category_rows(report: Report, index: dict[tuple[str, str], Comparison]
                   ) -> list[list[Cell]]:
    rows = []
    for category in report.categories:
        cells = [Cell(category)]
        for setting in report.shown():
            comp = index.get((setting.name, category))
            if comp is None:
                cells.append(Cell(MISSING))
                continue
            text = " / ".join((
                with_interval(comp.speedup_spec_bench, comp.speedup_spec_bench_interval),
                with_interval(comp.speedup_throughput, comp.speedup_throughput_interval)))
            cells.append(Cell(text, comp.speedup_spec_bench))
        rows.append(cells)
    return rows


def _acceptance_rows(report: Report) -> tuple[list[str], list[list[Cell]]]:
    rows: list[list[Cell]] = []
    longest = 0
    for setting in report.settings:
        values = setting.acceptance_per_position
        if not values:
            continue
        longest = max(longest, len(values))
        rows.append([Cell(setting.display_name()),
                     *(Cell(number(v), v) for v in values)])
    for row in rows:
        row.extend(Cell(MISSING) for _ in range(longest + 1 - len(row)))
    return [f"position {i}" for i in range(1, longest + 1)], rows


def _divergence(comp: TurnComparison) -> Divergence:
    margin = number(comp.baseline_margin, 3)
    if comp.margin_source:
        margin += f" ({comp.margin_source})"
    return Divergence(
        where=f"{comp.id}, turn {comp.turn + 1}"
              + (f", token {comp.position}" if comp.position is not None else ""),
        status=comp.status.replace("_", "-"),
        margin=margin,
        note=comp.reason or "",
        baseline=split_divergence(comp.baseline_text, comp.candidate_text),
        candidate=split_divergence(comp.candidate_text, comp.baseline_text),
    )


def _lossless(report: Report) -> list[dict[str, Any]]:
    checks = []
    for name, result in report.lossless.items():
        checks.append({
            "name": name,
            "result": result,
            "source": (margin_source_text(result) if result.scoring_engine is not None
                       else ""),
            "divergences": [_divergence(c) for c in _diverged(result)],
            "sampled": result.sampled_notes(),
        })
    return checks


def _diverged(result: LosslessResult) -> list[TurnComparison]:
    return [c for c in result.comparisons if c.status in {"near_tie", "mismatch",
                                                          "unclassified"}]


def _runs(report: Report) -> list[dict[str, Any]]:
    runs = []
    for setting in report.settings:
        for run in sorted(setting.runs, key=lambda r: r.repeat):
            provenance = run_folder.read_provenance(run.folder)
            runs.append({
                "setting": setting.display_name(),
                "repeat": run.repeat,
                "folder": str(run.folder),
                "strategy": run.strategy,
                "model": run.config.model,
                "fields": [str(provenance.get(key, MISSING)) for key in PROVENANCE_KEYS],
                "details": orjson.dumps(provenance, option=orjson.OPT_INDENT_2
                                        | orjson.OPT_SORT_KEYS).decode(),
            })
    return runs


def _plots(plots: Sequence[Path]) -> list[dict[str, str]]:
    return [{"name": p.stem, "caption": PLOT_CAPTIONS.get(p.stem, p.stem),
             "data": base64.b64encode(p.read_bytes()).decode("ascii")}
            for p in plots if p.suffix == ".png"]


def _sweep(lines: Sequence[SweepLine], slo: Slo | None) -> list[dict[str, Any]]:
    """A concurrency sweep's tables: each setting's rows and its crossover."""
    return [{"family": line.family, "columns": concurrency.columns(slo),
             "rows": [concurrency.point_cells(point, slo) for point in line.points],
             "crossover": concurrency.crossover_text(line.crossover)}
            for line in lines]


def render_html(report: Report, plots: Sequence[Path], sweep: Sequence[SweepLine] = (),
                slo: Slo | None = None) -> str:
    """The text of ``report.html``: the report and its plots in one page.

    ``sweep``: the concurrency sweep's lines (:func:`specdec.concurrency.concurrency_lines`).
    """
    import jinja2  # noqa: PLC0415 - only when a report is written

    index = {(c.setting, c.category): c for c in report.comparisons}
    overall = {c.setting: c for c in report.comparisons if c.category == OVERALL}
    positions, acceptance = _acceptance_rows(report)
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("specdec", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    best = report.best.get(OVERALL)
    return environment.get_template(TEMPLATE).render(
        generated=now(),
        report=report,
        kinds=", ".join(interval_kinds(report)) or "no intervals",
        interval_method=(f"{CONFIDENCE:.0%} confidence intervals: paired bootstrap over "
                         f"prompts ({METHOD}, {RESAMPLES} resamples, seed {SEED})"),
        verdict=_verdict_rows(report, overall),
        best=best,
        best_is_baseline=report.best_is_baseline(OVERALL),
        shown=[s.display_name() for s in report.shown()],
        categories=_category_rows(report, index),
        positions=positions,
        acceptance=acceptance,
        lossless=_lossless(report),
        runs=_runs(report),
        provenance_keys=PROVENANCE_KEYS,
        plots=_plots(plots),
        sweep=_sweep(sweep, slo),
    )
