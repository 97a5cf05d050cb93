"""Concurrency sweeps: each speculative setting against its baseline at every swept concurrency.

A study on the server engine that sweeps ``engine.concurrency`` (``sweep:
{concurrency: [1, 2, 4, 8]}``) has a baseline at every point, and every run
reads the server's acceptance counters before and after itself, so each point's
speedup and acceptance come from that point's requests only.  This module reads
a built :class:`~specdec.report.Report` and lines the points up: per
speculative setting (its name without the concurrency), the overall speedup
over the baseline at the same concurrency with its interval, the mean
acceptance length, and optionally goodput under an :class:`~specdec.metrics.Slo`
(:func:`specdec.metrics.goodput`) for the setting and its baseline.  The
crossover is :func:`specdec.intervals.crossover`'s: the lowest swept
concurrency where the speedup's interval no longer lies above 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import frozen

from specdec.errors import UsageError
from specdec.formatting import MISSING, number, percent
from specdec.intervals import CROSSED, Crossover, Interval, crossover
from specdec.metrics import Goodput, Slo, goodput
from specdec.report import OVERALL
from specdec.report_text import with_interval

if TYPE_CHECKING:
    from collections.abc import Sequence

    from specdec.report import Report, Setting

__all__ = ["CONCURRENCY", "SweepLine", "SweepPoint", "columns", "concurrency_lines",
           "crossover_text", "markdown", "parse_slo", "point_cells"]

CONCURRENCY = "engine.concurrency"
"""The swept label (study.SWEEP_ALIASES maps ``concurrency`` to it)."""


@frozen
class SweepPoint:
    """One speculative setting at one swept concurrency, against its baseline there."""

    concurrency: int
    setting: str
    baseline: str
    speedup: float | None
    """Spec-Bench speedup over the baseline at this concurrency, overall."""
    speedup_interval: Interval | None
    mean_acceptance_length: float | None
    goodput: Goodput | None = None
    """The setting's goodput under the SLO, over all its repeats (None without an SLO)."""
    baseline_goodput: Goodput | None = None


@frozen
class SweepLine:
    """A speculative setting's points over the swept concurrencies, and its crossover."""

    family: str
    points: tuple[SweepPoint, ...]
    crossover: Crossover | None
    """None when no point has a speedup interval (one request per point, say)."""


def _pooled_goodput(setting: Setting, slo: Slo) -> Goodput | None:
    """Goodput over every repeat: good requests over all requests, and over summed run time."""
    records = [record for run in setting.runs for record in run.records]
    duration = sum(run.summary.elapsed_s for run in setting.runs)
    if not records or duration <= 0:
        return None
    return goodput(records, slo, duration)


def concurrency_lines(report: Report, slo: Slo | None = None) -> tuple[SweepLine, ...]:
    """Every speculative setting's sweep over ``engine.concurrency``; empty if it was not swept.

    A line holds the settings that differ only in their concurrency
    (:meth:`~specdec.report.Setting.family`), sorted by concurrency.  Baselines
    and A/A settings have no line; a setting without a baseline is left out.
    """
    by_name = {setting.name: setting for setting in report.settings}
    overall = {c.setting: c for c in report.comparisons if c.category == OVERALL}
    families: dict[str, list[SweepPoint]] = {}
    for setting in report.settings:
        level = setting.first.labels.get(CONCURRENCY)
        baseline_name = report.baselines.get(setting.name)
        if (setting.is_baseline or setting.is_aa or not isinstance(level, int)
                or baseline_name is None or baseline_name == setting.name):
            continue
        comparison = overall.get(setting.name)
        baseline = by_name[baseline_name]
        families.setdefault(setting.family(CONCURRENCY), []).append(SweepPoint(
            level, setting.name, baseline_name,
            comparison.speedup_spec_bench if comparison else None,
            comparison.speedup_spec_bench_interval if comparison else None,
            comparison.mean_acceptance_length if comparison else None,
            _pooled_goodput(setting, slo) if slo else None,
            _pooled_goodput(baseline, slo) if slo else None,
        ))
    lines = []
    for family, points in families.items():
        ordered = tuple(sorted(points, key=lambda point: point.concurrency))
        intervals = [(float(p.concurrency), p.speedup_interval) for p in ordered
                     if p.speedup_interval is not None]
        lines.append(SweepLine(family, ordered, crossover(intervals) if intervals else None))
    return tuple(lines)


def crossover_text(found: Crossover | None) -> str:
    """The crossover as the report states it."""
    if found is None:
        return "crossover: unknown (no speedup interval at any point)"
    if found.concurrency is None:
        return "crossover: none in the swept range (the interval lies above 1 at every point)"
    if found.outcome == CROSSED:
        return (f"crossover: concurrency {found.concurrency:g} (the lowest whose interval no "
                "longer lies above 1)")
    return (f"crossover: at or below concurrency {found.concurrency:g} (the interval does not "
            "lie above 1 even at the lowest point)")


def _goodput_cell(value: Goodput | None) -> str:
    if value is None:
        return MISSING
    return f"{number(value.rate_per_s)}/s ({percent(value.share)})"


def point_cells(point: SweepPoint, slo: Slo | None) -> list[str]:
    """A point's row: concurrency, speedup [interval], acceptance, and goodputs with an SLO."""
    cells = [str(point.concurrency), with_interval(point.speedup, point.speedup_interval),
             number(point.mean_acceptance_length)]
    if slo is not None:
        cells += [_goodput_cell(point.goodput), _goodput_cell(point.baseline_goodput)]
    return cells


def columns(slo: Slo | None) -> list[str]:
    """The table's column names, in :func:`point_cells`' order."""
    names = ["concurrency", "speedup", "mean acceptance length"]
    return names + (["goodput", "baseline goodput"] if slo is not None else [])


def markdown(lines: Sequence[SweepLine], slo: Slo | None = None) -> list[str]:
    """The report's "Concurrency sweep" section; no lines for a study that swept none."""
    if not lines:
        return []
    out = ["## Concurrency sweep", "",
           ("Each point is compared with the baseline at the same concurrency (its own runs and "
            "counters). The crossover is the lowest concurrency where the speedup's 95% interval "
            "no longer lies above 1.")]
    if slo is not None:
        limits = ", ".join(f"{name} {value:g} ms" for name, value in
                           (("TTFT", slo.ttft_ms), ("TPOT", slo.tpot_ms), ("E2EL", slo.e2el_ms))
                           if value is not None)
        out.append(f"Goodput: requests per second that met every limit ({limits}), as "
                   "`vllm bench serve --goodput` counts them, with their share.")
    out.append("")
    for line in lines:
        out += [f"### {line.family}", ""]
        names = columns(slo)
        out += ["| " + " | ".join(names) + " |", "|" + " --- |" * len(names)]
        out += ["| " + " | ".join(point_cells(point, slo)) + " |" for point in line.points]
        out += ["", crossover_text(line.crossover), ""]
    return out


_SLO_KEYS = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2el": "e2el_ms"}


def parse_slo(text: str) -> Slo:
    """An :class:`~specdec.metrics.Slo` from ``vllm bench serve --goodput``'s spelling.

    ``"ttft:200 tpot:50"`` (or with commas, ``=`` or the ``_ms`` suffix:
    ``"ttft_ms=200,tpot_ms=50"``), each limit in milliseconds.

    Raises:
        UsageError: an unknown key, a value that is not a number above 0,
            a key given twice, or no limit at all.
    """
    limits: dict[str, float] = {}
    for part in text.replace(",", " ").split():
        key, sep, value = part.replace("=", ":").partition(":")
        name = _SLO_KEYS.get(key.removesuffix("_ms"))
        if not sep or name is None:
            msg = (f"--slo: {part!r} is not a limit; write KEY:MILLISECONDS with KEY one of "
                   "ttft, tpot, e2el, e.g. --slo 'ttft:200 tpot:50'")
            raise UsageError(msg)
        if name in limits:
            msg = f"--slo: {key} is given twice"
            raise UsageError(msg)
        try:
            limits[name] = float(value)
        except ValueError:
            msg = f"--slo: {key}'s limit {value!r} is not a number of milliseconds"
            raise UsageError(msg) from None
    if not limits:
        msg = "--slo needs at least one limit, e.g. --slo 'ttft:200 tpot:50'"
        raise UsageError(msg)
    try:
        return Slo(**limits)
    except (TypeError, ValueError) as exc:
        msg = f"--slo: {exc}"
        raise UsageError(msg) from exc
