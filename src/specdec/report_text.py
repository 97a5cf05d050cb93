"""How a report's figures read as text, in every view of it.

The terminal table (:mod:`specdec.display`), ``report.md`` (:mod:`specdec.report_files`)
and ``report.html`` (:mod:`specdec.report_html`) show a speedup, its interval and
where a margin came from in the same words, from here.
"""

from __future__ import annotations

from specdec.formatting import interval_text, number
from specdec.intervals import Interval
from specdec.lossless import LosslessResult
from specdec.report import Comparison, Report


def with_interval(value: float | None, interval: Interval | None, digits: int = 2,
                  suffix: str = "x") -> str:
    """``1.59x [1.41, 1.77]``: a figure with its interval (the figure alone without one)."""
    if interval is None:
        return number(value, digits, suffix)
    return interval_text(value, interval.low, interval.high, digits, suffix)


def speedup_cell(comp: Comparison) -> tuple[str, str]:
    """The Spec-Bench and throughput speedups of a comparison, each with its interval."""
    return (with_interval(comp.speedup_spec_bench, comp.speedup_spec_bench_interval),
            with_interval(comp.speedup_throughput, comp.speedup_throughput_interval))


def interval_kinds(report: Report) -> list[str]:
    """The kinds of the report's speedup intervals, in a stable order."""
    return sorted({iv.kind for c in report.comparisons
                   for iv in (c.speedup_spec_bench_interval, c.speedup_throughput_interval)
                   if iv is not None})


def margin_source_text(result: LosslessResult) -> str:
    """Where a check's margins came from, with the scoring pass's engine settings."""
    engine = result.scoring_engine or {}
    settings = ", ".join(f"{key} {engine[key]}" for key in ("dtype", "enforce_eager", "backend")
                         if key in engine)
    return ("a scoring pass after the timed runs (the baseline's own prompt and output "
            f"prefilled, on the baseline's engine settings: {settings})")
