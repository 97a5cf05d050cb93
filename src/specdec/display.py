"""What people see in the terminal: progress bars and rich tables."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from specdec.formatting import number

if TYPE_CHECKING:
    from specdec.records import GroupMetrics, RequestRecord, SpecMetrics
    from specdec.report import Report
    from specdec.runner import RunResult

stdout = Console()
stderr = Console(stderr=True)

FAILURE_REASONS_SHOWN = 5
FAILURE_IDS_SHOWN = 3


class RequestProgress:
    """A progress bar over requests that appears once the engine is ready."""

    def __init__(self, progress: Progress) -> None:
        """Wrap a rich Progress."""
        self._progress = progress
        self._task: TaskID | None = None

    def start(self, total: int) -> None:
        """Show the bar for ``total`` requests."""
        self._task = self._progress.add_task("requests", total=total)

    def advance(self) -> None:
        """One more request finished."""
        if self._task is not None:
            self._progress.advance(self._task)


def progress_bar(*, transient: bool = False) -> Progress:
    """The progress display on stderr: description, bar, done of total, elapsed time.

    Use it as a context manager and add one task per thing being counted::

        with progress_bar() as bar:
            task = bar.add_task("configurations", total=len(items))
            bar.advance(task)

    The bars are drawn only when stderr is a terminal. Redirected to a file, rich
    would still print the final state of every bar when it stops, a line that is
    neither a log record nor JSON, so ``--log-format json 2>log`` would not be
    JSON lines only.
    """
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=stderr, transient=transient,
                    disable=not stderr.is_terminal)


@contextmanager
def progress() -> Iterator[RequestProgress]:
    """A request progress bar on stderr for the duration of a run."""
    with progress_bar() as bar:
        yield RequestProgress(bar)


def _row(name: str, group: GroupMetrics, spec: SpecMetrics | None) -> list[str]:
    return [
        name,
        str(group.requests),
        str(group.output_tokens),
        number(group.walltime_s.mean),
        number(group.walltime_s.median),
        number(group.tokens_per_s_total, 1),
        number(group.tokens_per_s_mean, 1),
        number(spec.acceptance_rate if spec else None),
        number(spec.mean_acceptance_length if spec else None),
    ]


def print_summary(result: RunResult) -> None:
    """The end-of-run table, overall and per category."""
    summary = result.summary
    table = Table(title=f"{result.config.strategy.name} on {result.config.model} "
                        f"({result.config.mode}) -> {result.output_dir}")
    for header in ("category", "requests", "out tokens", "mean s", "median s",
                   "tok/s total", "tok/s mean", "accept rate", "mean accept len"):
        table.add_column(header, justify="left" if header == "category" else "right")
    for name, group in summary.categories.items():
        table.add_row(*_row(name, group, group.spec))
    table.add_section()
    table.add_row(*_row("overall", summary.overall, summary.engine_spec or summary.overall.spec))
    stdout.print(table)
    stdout.print(
        f"elapsed {number(summary.elapsed_s)} s, throughput "
        f"{number(summary.throughput_tokens_per_s, 1)} output tokens/s (warm-up excluded)"
    )
    if summary.failed_requests:
        total = summary.overall.requests + summary.failed_requests
        for line in failure_lines(result.records, total, stdout.width):
            # Reasons are the engine's words: brackets in them are not markup.
            stdout.print(line, markup=False, highlight=False, soft_wrap=True)


def failure_lines(records: Sequence[RequestRecord], total: int, width: int) -> list[str]:
    """How many requests failed and why, wrapped at ``width`` between words.

    Identical reasons are grouped, the commonest first, each with its count and
    its first few request ids; the last line says the figures above count only
    the requests that succeeded.
    """
    by_reason: dict[str, list[str]] = {}
    for record in records:
        if record.error is not None:
            by_reason.setdefault(record.error, []).append(record.id)
    failed = sum(len(ids) for ids in by_reason.values())
    if not failed:
        return []
    groups = sorted(by_reason.items(), key=lambda item: -len(item[1]))
    head = f"{failed} of {total} requests failed"
    if len(groups) == 1:
        reason, ids = groups[0]
        paragraphs = [(f"{head}: {reason} {_ids(ids)}", "  ")]
    else:
        paragraphs = [(f"{head}:", "")]
        paragraphs += [(f"- {len(ids)}: {reason} {_ids(ids)}", "    ")
                       for reason, ids in groups[:FAILURE_REASONS_SHOWN]]
        if len(groups) > FAILURE_REASONS_SHOWN:
            hidden = len(groups) - FAILURE_REASONS_SHOWN
            rest = f"- {hidden} other reasons: every request's error is in metrics.json"
            paragraphs.append((rest, "    "))
    counted = f"The figures above count only the {total - failed} requests that succeeded."
    paragraphs.append((counted, ""))
    lines: list[str] = []
    for text, indent in paragraphs:
        lines += textwrap.wrap(text, width=max(width, 20), subsequent_indent=indent,
                               break_long_words=False, break_on_hyphens=False)
    return lines


def _ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:FAILURE_IDS_SHOWN])
    if len(ids) > FAILURE_IDS_SHOWN:
        shown += f", +{len(ids) - FAILURE_IDS_SHOWN} more"
    return f"(id {shown})" if len(ids) == 1 else f"(ids {shown})"


def print_models() -> None:
    """``specdec models list``."""
    from specdec.models import BUNDLED  # noqa: PLC0415

    table = Table(title="bundled models")
    for header in ("name", "prepared", "path", "description"):
        table.add_column(header)
    for model in BUNDLED.values():
        table.add_row(model.name, "yes" if model.prepared else "no", str(model.path),
                      model.description)
    stdout.print(table)


def print_plugins() -> int:
    """``specdec plugins``: every plugin with its package, version and status."""
    from specdec.commands import command_plugins  # noqa: PLC0415
    from specdec.registry import all_registries  # noqa: PLC0415

    table = Table(title="specdec plugins")
    for header in ("kind", "name", "package", "version", "status"):
        table.add_column(header)
    broken = False
    for reg in (*all_registries(), command_plugins):
        for info in reg.infos():
            status = "ok" if info.error is None else info.error
            broken = broken or (info.enabled and info.error is not None)
            table.add_row(info.kind, info.name, info.package, info.version, status)
    stdout.print(table)
    if broken:
        stderr.print("some plugins failed to load; their error is in the status column")
    return 0


def print_report(report: Report) -> None:
    """The comparison table of ``specdec report``: every setting, overall and per category.

    Each cell holds the Spec-Bench speedup over the throughput speedup, each with its
    confidence interval; A/A warnings come last, after the verdict they put in doubt.
    """
    from specdec.report_files import interval_kinds, speedup_cell  # noqa: PLC0415

    kinds = ", ".join(interval_kinds(report)) or "no intervals"
    table = Table(title=f"speedup over the baseline: Spec-Bench, then throughput "
                        f"(95% intervals, {kinds})")
    table.add_column("setting")
    for category in report.categories:
        table.add_column(category, justify="right")
    index = {(c.setting, c.category): c for c in report.comparisons}
    for setting in report.settings:
        cells = []
        for category in report.categories:
            comp = index.get((setting.name, category))
            cells.append("-" if comp is None else "\n".join(speedup_cell(comp)))
        table.add_row(escape(setting.display_name()), *(escape(c) for c in cells))
    stdout.print(table)
    for name, result in report.lossless.items():
        stdout.print(f"lossless {name}: {result.verdict} ({result.equal} equal, {result.near_tie} "
                     f"near-tie flips, {result.mismatch} mismatches, {result.unclassified} "
                     f"unclassified of {result.turns} turns)"
                     + ("; margins from the scoring pass" if result.scoring_engine else ""))
    for category, best in report.best.items():
        stdout.print(escape(f"best for {category}: {best['setting']} {best['speedup']} "
                            f"(fastest {best['fastest']} {best['fastest_speedup']})"))
    for warning in report.warnings:
        stdout.print(f"[bold yellow]warning:[/] {escape(warning)}")
