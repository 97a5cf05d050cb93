"""What people see in the terminal: progress bars and rich tables.

Every table is printed through :func:`print_table`, which keeps it readable at any
width without cutting a name: a table that fits is printed as rich draws it; one that
does not gets column widths that wrap cells only between words, then is split into
tables that repeat its key columns, and as a last resort is printed as one record per
row. A console that is not a terminal (output piped to a file) is 80 columns wide
unless ``COLUMNS`` says otherwise.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

from attrs import frozen
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from specdec.formatting import MISSING, duration, number, percent

if TYPE_CHECKING:
    from specdec.records import GroupMetrics, RequestRecord, SpecMetrics
    from specdec.report import Report
    from specdec.runner import RunResult
    from specdec.study import ItemStatus
    from specdec.tune import TuneResult

stdout = Console()
stderr = Console(stderr=True)

FAILURE_REASONS_SHOWN = 5
FAILURE_IDS_SHOWN = 3


@frozen
class Column:
    """A column of a table printed by :func:`print_table`."""

    header: str
    justify: Literal["left", "right"] = "left"
    whole_lines: bool = False
    """Never wrap a line of its cells (an estimate with its interval reads as one value)."""


Row = Sequence[str] | None
"""A table row's cells (plain text, not markup), or None for a line between sections."""


def print_table(title: str, columns: Sequence[Column], rows: Sequence[Row], *, keys: int = 1,
                fallback: Literal["split", "records"] = "split") -> None:
    """Print a table on stdout, readable at its width, never cutting a word.

    A table that fits is drawn as rich draws it. One that does not gets column widths
    that wrap cells only between words, the longest cells first (rich would shrink
    columns evenly and cut names with an ellipsis). If its words do not fit either,
    ``fallback`` decides: ``split`` prints it as several tables, each repeating the
    first ``keys`` columns; ``records`` (and ``split`` when even one column beside the
    keys does not fit) prints each row as its keys followed by one ``header: value``
    line per other column, leaving a word longer than the line (a path) whole.
    """
    width = stdout.width
    body = [row for row in rows if row is not None]
    widest = [_widest([column.header, *(row[i] for row in body)])
              for i, column in enumerate(columns)]
    if table_width(widest) <= width:
        stdout.print(_table(title, columns, range(len(columns)), None, rows))
        return
    narrowest = [max(_longest_word(column.header),
                     _widest(row[i] for row in body) if column.whole_lines
                     else _longest_word(*(row[i] for row in body)))
                 for i, column in enumerate(columns)]
    groups = column_groups(widest, narrowest, keys, width)
    if groups is None or (fallback == "records" and len(groups) > 1):
        _print_lines(record_lines(title, columns, rows, keys, width))
        return
    # A title goes above the table as rich centres it, unless the table is split or too
    # narrow for the title's longest word (a path): then it has lines of its own.
    inside = len(groups) == 1 and _longest_word(title) <= table_width(groups[0][1])
    if not inside:
        _print_lines(wrap_words(title, width), style="table.title")
    for indices, widths in groups:
        stdout.print(_table(title if inside else None, columns, indices, widths, rows))


def _print_lines(lines: Sequence[str], style: str | None = None) -> None:
    # Already wrapped: a word longer than the line stays whole rather than folded.
    for line in lines:
        stdout.print(line, style=style, markup=False, highlight=False, soft_wrap=True)


def wrap_words(text: str, width: int, indent: str = "") -> list[str]:
    """``text`` in lines of at most ``width`` (at least 20), broken between words only.

    Later lines start with ``indent``. A word longer than a line (a path) is left whole,
    so it can still be copied.
    """
    return textwrap.wrap(text, width=max(width, 20), subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def table_width(widths: Sequence[int]) -> int:
    """How wide rich draws a table whose columns' text is ``widths`` wide.

    A default rich table puts a space each side of every cell and a rule between
    columns and at both edges.
    """
    return sum(widths) + 3 * len(widths) + 1


def fit_widths(widest: Sequence[int], narrowest: Sequence[int], width: int) -> list[int] | None:
    """Widths of columns for a table ``width`` wide, or None if their words do not fit.

    ``widest`` is each column's longest line, ``narrowest`` its longest word (or line,
    for a column that must not wrap). The widest column that can still give a character
    gives it, one at a time, so the longest cells wrap first and none gets narrower than
    its longest word.
    """
    room = width - table_width([0] * len(widest))
    if sum(narrowest) > room:
        return None
    widths = list(widest)
    for _ in range(sum(widths) - room):
        shrinkable = [i for i, w in enumerate(widths) if w > narrowest[i]]
        widths[max(shrinkable, key=widths.__getitem__)] -= 1
    return widths


def column_groups(widest: Sequence[int], narrowest: Sequence[int], keys: int,
                  width: int) -> list[tuple[list[int], list[int]]] | None:
    """The column indices and widths of the tables a table is split into to fit ``width``.

    One table if its words fit; else, in order, as many columns as fit beside the first
    ``keys`` columns (which every table repeats). None if a column does not fit even
    beside the keys alone.
    """

    def fit(indices: list[int]) -> list[int] | None:
        return fit_widths([widest[i] for i in indices], [narrowest[i] for i in indices], width)

    every = list(range(len(widest)))
    if (widths := fit(every)) is not None:
        return [(every, widths)]
    groups: list[list[int]] = []
    current = list(range(keys))
    for index in range(keys, len(widest)):
        if fit([*current, index]) is None and len(current) > keys:
            groups.append(current)
            current = list(range(keys))
        current.append(index)
    groups.append(current)
    fitted = [(group, fit(group)) for group in groups]
    if any(widths is None for _, widths in fitted):
        return None
    return [(group, widths) for group, widths in fitted if widths is not None]


def record_lines(title: str, columns: Sequence[Column], rows: Sequence[Row], keys: int,
                 width: int) -> list[str]:
    """A table as lines of text: each row's keys, then a ``header: value`` line per cell.

    The lines wrap at ``width`` as :func:`wrap_words` does, leaving a path whole.
    """
    lines = wrap_words(title, width)
    for row in rows:
        if row is None:
            continue
        lines += wrap_words(" ".join(row[:keys]), width, "  ")
        for column, cell in zip(columns[keys:], row[keys:], strict=True):
            first, *rest = cell.split("\n")
            lines += wrap_words(f"  {column.header}: {first}", width, "    ")
            for part in rest:
                lines += wrap_words(f"    {part}", width, "    ")
    return lines


def _widest(cells: Iterable[str]) -> int:
    return max((cell_len(line) for cell in cells for line in cell.split("\n")), default=0)


def _longest_word(*cells: str) -> int:
    return max((cell_len(word) for cell in cells for word in cell.split()), default=0)


def _table(title: str | None, columns: Sequence[Column], indices: Sequence[int],
           widths: Sequence[int] | None, rows: Sequence[Row]) -> Table:
    table = Table(title=None if title is None else escape(title))
    for n, index in enumerate(indices):
        column = columns[index]
        # Folding is the last resort of a word longer than its column; it never cuts.
        table.add_column(escape(column.header), justify=column.justify, overflow="fold",
                         width=None if widths is None else widths[n])
    for row in rows:
        if row is None:
            table.add_section()
        else:
            table.add_row(*(escape(row[index]) for index in indices))
    return table


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


def _on_stderr(*columns: ProgressColumn, transient: bool = False) -> Progress:
    # Drawn only when stderr is a terminal: see progress_bar.
    return Progress(*columns, console=stderr, transient=transient,
                    disable=not stderr.is_terminal)


def progress_bar(*, transient: bool = False) -> Progress:
    """The progress display on stderr: description, bar, done of total, elapsed time.

    Use it as a context manager and add one task per thing being counted::

        with progress_bar() as bar:
            task = bar.add_task("requests", total=len(conversations))
            bar.advance(task)

    The bars are drawn only when stderr is a terminal. Redirected to a file, rich
    would still print the final state of every bar when it stops, a line that is
    neither a log record nor JSON, so ``--log-format json 2>log`` would not be
    JSON lines only.
    """
    return _on_stderr(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), transient=transient)


@contextmanager
def progress() -> Iterator[RequestProgress]:
    """A request progress bar on stderr for the duration of a run."""
    with progress_bar() as bar:
        yield RequestProgress(bar)


class BatchCounter:
    """A batch's requests done and to do, and the time left, from what the batch reports.

    A batch learns an item's request total when the item starts. Until every item has
    started, each item not started yet counts as the mean of the totals known (a batch's
    items usually share their benchmark), and :attr:`estimated` is true. The time left
    is the requests left at the rate this call of the batch has run them so far, with
    each item's process and engine start-up spread over its requests: close once an
    item has finished, a little high within the last item, whose start-up is behind it.
    Requests an earlier, interrupted call finished count as done but not towards the
    rate. The scoring pass after the last item is not counted.
    """

    def __init__(self, items: int, clock: Callable[[], float] = time.monotonic) -> None:
        """Count for a batch of ``items`` items; ``clock`` gives seconds (for tests)."""
        self.items = items
        self.items_done = 0
        self._clock = clock
        self._started = clock()
        self._planned: dict[str, int] = {}
        """Each started item's request total, as the batch first gave it."""
        self._total: dict[str, int] = {}
        """Each started item's requests that will be done: its finished ones once it ended."""
        self._done: dict[str, int] = {}
        self._before: dict[str, int] = {}
        """Each item's requests done when this call first saw it: not run by this call."""

    def finished_before(self, item: str, requests: int) -> None:
        """An item an earlier call of the batch finished, with ``requests`` requests."""
        self._planned[item] = self._total[item] = self._done[item] = self._before[item] = requests
        self.items_done += 1

    def update(self, item: str, done: int, total: int) -> None:
        """The running ``item`` has ``done`` of its ``total`` requests done.

        ``done`` counts lines of its responses, so requests run again by
        ``--retry-failed`` count twice: it is capped at ``total``.
        """
        self._planned[item] = self._total[item] = total
        self._done[item] = min(done, total)
        self._before.setdefault(item, self._done[item])

    def item_ended(self, item: str) -> None:
        """``item`` ended: the requests it did not finish (it failed) will not run."""
        self.items_done += 1
        self._total[item] = self._done.get(item, 0)

    @property
    def done(self) -> int:
        """Requests done over the batch, by this call and earlier ones."""
        return sum(self._done.values())

    @property
    def estimated(self) -> bool:
        """Whether :attr:`total` counts items not started yet as the mean of the others."""
        return len(self._planned) < self.items

    @property
    def total(self) -> int | None:
        """Requests over the batch (None until one item's total is known)."""
        if not self._planned:
            return None
        mean = sum(self._planned.values()) / len(self._planned)
        return sum(self._total.values()) + round((self.items - len(self._planned)) * mean)

    def seconds_left(self) -> float | None:
        """Seconds until the last request is done, at this call's rate (None before one)."""
        total = self.total
        ran = sum(done - self._before[item] for item, done in self._done.items())
        elapsed = self._clock() - self._started
        if total is None or ran <= 0 or elapsed <= 0:
            return None
        return max(total - self.done, 0) * elapsed / ran


class BatchProgress:
    """A batch's progress on stderr: items done, and requests done with the time left.

    Use it as a context manager around ``run_batch``, with :meth:`update` as its
    ``on_progress`` and :meth:`item_ended` as its ``on_item``. Items whose folder under
    ``folder`` already holds a finished run (a resumed batch) count as done from the
    start. Like :func:`progress_bar`, it is drawn only when stderr is a terminal.
    """

    def __init__(self, items: Sequence[str], folder: Path,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Progress of the batch of the items named ``items``, in the batch folder ``folder``."""
        from specdec import run_folder  # noqa: PLC0415

        self.counter = BatchCounter(len(items), clock)
        for name in items:
            if run_folder.is_finished(folder / name):
                self.counter.finished_before(name, run_folder.count_records(folder / name))
        self.progress = _on_stderr(TextColumn("{task.description}"), BarColumn(),
                                   TextColumn("{task.fields[count]}"), TimeElapsedColumn(),
                                   TextColumn("{task.fields[left]}"))
        self._items = self.progress.add_task("configurations", total=len(items), count="",
                                             left="")
        self._requests = self.progress.add_task("requests", total=None, count="", left="")
        self._show()

    def __enter__(self) -> Self:
        """Start drawing."""
        self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        """Stop drawing, leaving the last state on the terminal."""
        self.progress.stop()

    def update(self, item: str, done: int, total: int) -> None:
        """``run_batch``'s ``on_progress``: the running item has ``done`` of ``total`` done."""
        self.counter.update(item, done, total)
        self._show(item)

    def item_ended(self, status: ItemStatus) -> None:
        """``run_batch``'s ``on_item``: an item ended (done or failed)."""
        self.counter.item_ended(status.name)
        self._show()

    def _show(self, item: str | None = None) -> None:
        counter = self.counter
        self.progress.update(self._items, completed=counter.items_done,
                             count=f"{counter.items_done}/{counter.items}")
        total = counter.total
        shown = "?" if total is None else f"{'~' if counter.estimated else ''}{total}"
        left = counter.seconds_left()
        self.progress.update(
            self._requests, total=total, completed=counter.done,
            description="requests" if item is None else f"requests ({escape(item)})",
            count=f"{counter.done}/{shown}",
            left=f"{MISSING} left" if left is None else f"~{duration(left)} left")


SUMMARY_HEADERS = ("category", "requests", "out tokens", "mean s", "median s", "tok/s total",
                   "tok/s mean", "accept rate", "mean accept len")


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
    columns = [Column(header, "left" if header == "category" else "right")
               for header in SUMMARY_HEADERS]
    rows: list[Row] = [_row(name, group, group.spec) for name, group in summary.categories.items()]
    rows += [None, _row("overall", summary.overall, summary.engine_spec or summary.overall.spec)]
    print_table(f"{result.config.strategy.name} on {result.config.model} "
                f"({result.config.mode}) -> {result.output_dir}", columns, rows)
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
        lines += wrap_words(text, width, indent)
    return lines


def _ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:FAILURE_IDS_SHOWN])
    if len(ids) > FAILURE_IDS_SHOWN:
        shown += f", +{len(ids) - FAILURE_IDS_SHOWN} more"
    return f"(id {shown})" if len(ids) == 1 else f"(ids {shown})"


def print_models() -> None:
    """``specdec models list``."""
    from specdec.models import BUNDLED  # noqa: PLC0415

    columns = [Column("name"), Column("prepared"), Column("path"), Column("description")]
    rows: list[Row] = []
    for model in BUNDLED.values():
        # A head trained here wins over the one the package ships (models.prepare).
        shipped = model.shipped_path
        if model.prepared:
            state, path = ("trained here" if model.shipped else "yes"), model.path
        elif shipped is not None:
            state, path = "shipped", shipped
        else:
            state, path = "no", model.path
        rows.append((model.name, state, str(path), model.description))
    # Split in tables, a model's path would sit apart from its name: one record each reads better.
    print_table("bundled models", columns, rows, fallback="records")


def print_plugins() -> int:
    """``specdec plugins``: every plugin with its package, version and status."""
    from specdec.commands import command_plugins  # noqa: PLC0415
    from specdec.registry import all_registries  # noqa: PLC0415

    columns = [Column(header) for header in ("kind", "name", "package", "version", "status")]
    rows: list[Row] = []
    broken = False
    for reg in (*all_registries(), command_plugins):
        for info in reg.infos():
            status = "ok" if info.error is None else info.error
            broken = broken or (info.enabled and info.error is not None)
            rows.append((info.kind, info.name, info.package, info.version, status))
    print_table("specdec plugins", columns, rows, keys=2)
    if broken:
        stderr.print("some plugins failed to load; their error is in the status column")
    return 0


def print_report(report: Report) -> None:
    """The comparison table of ``specdec report``: every setting, overall and per category.

    Each cell holds the Spec-Bench speedup over the throughput speedup, each with its
    confidence interval; A/A warnings come last, after the verdict they put in doubt.
    """
    from specdec.report_text import interval_kinds, speedup_cell  # noqa: PLC0415

    kinds = ", ".join(interval_kinds(report)) or "no intervals"
    columns = [Column("setting"), *(Column(category, "right", whole_lines=True)
                                    for category in report.categories)]
    index = {(c.setting, c.category): c for c in report.comparisons}
    rows: list[Row] = []
    for setting in report.settings:
        cells = []
        for category in report.categories:
            comp = index.get((setting.name, category))
            cells.append(MISSING if comp is None else "\n".join(speedup_cell(comp)))
        rows.append((setting.display_name(), *cells))
    print_table(f"speedup over the baseline: Spec-Bench, then throughput (95% intervals, "
                f"{kinds})", columns, rows)
    for name, result in report.lossless.items():
        if result.sampled_notes():
            first, *rest = result.sampled_notes()
            stdout.print(escape(f"lossless {name}: {first}"))
            for line in rest:
                stdout.print(escape(f"  {line}"))
            continue
        stdout.print(escape(f"lossless {name}: {result.verdict} ({result.equal} equal, "
                            f"{result.near_tie} near-tie flips, {result.mismatch} mismatches, "
                            f"{result.unclassified} unclassified of {result.turns} turns)"
                            + ("; margins from the scoring pass" if result.scoring_engine
                               else "")))
    for category, best in report.best.items():
        stdout.print(escape(f"best for {category}: {best['setting']} {best['speedup']} "
                            f"(fastest {best['fastest']} {best['fastest_speedup']})"))
    for warning in report.warnings:
        stdout.print(f"[bold yellow]warning:[/] {escape(warning)}")
    print_verdict(report)


def print_verdict(report: Report) -> None:
    """The answer in one table: each setting's overall speedup, acceptance and lossless check.

    One row per setting compared with a baseline (A/A rows included, named as such):
    the overall Spec-Bench speedup and throughput speedup with their intervals, the
    mean acceptance length with its interval, and the lossless verdict; then the best
    setting overall by the report's rule (docs/studies.md).
    """
    from specdec.report import OVERALL  # noqa: PLC0415
    from specdec.report_text import with_interval  # noqa: PLC0415

    overall = {c.setting: c for c in report.comparisons if c.category == OVERALL}
    rows: list[Row] = []
    for setting in report.settings:
        comp = overall.get(setting.name)
        if comp is None or setting.is_baseline or setting.name not in report.baselines:
            continue
        lossless = report.lossless.get(setting.name)
        rows.append((
            setting.display_name(),
            with_interval(comp.speedup_spec_bench, comp.speedup_spec_bench_interval),
            with_interval(comp.speedup_throughput, comp.speedup_throughput_interval),
            with_interval(comp.mean_acceptance_length, comp.mean_acceptance_length_interval,
                          suffix=""),
            MISSING if lossless is None else lossless.verdict,
        ))
    if not rows:
        return
    columns = [Column("setting"), Column("speedup", "right", whole_lines=True),
               Column("throughput speedup", "right", whole_lines=True),
               Column("mean acceptance length", "right", whole_lines=True),
               Column("lossless")]
    print_table("verdict (overall, 95% intervals)", columns, rows, fallback="records")
    best = report.best.get(OVERALL)
    if best is None:
        return
    if report.best_is_baseline(OVERALL):
        line = (f"verdict: nothing beats the baseline {best['setting']} beyond the noise "
                f"(fastest {best['fastest']} {best['fastest_speedup']}; docs/studies.md)")
    else:
        line = (f"verdict: {best['setting']} {best['speedup']} is the best setting overall "
                "(faster only when its interval lies above 1; docs/studies.md)")
    stdout.print(escape(line))


def print_tune(result: TuneResult) -> None:
    """What ``specdec tune`` ends with: the ranking, predicted against measured, the advice."""
    from specdec import tune_files as files  # noqa: PLC0415

    ranking = result.ranking
    for fit in result.fits:
        stdout.print(escape(f"cost model at batch size {fit.batch_size}: {fit.form} (held-out "
                            f"error {percent(fit.held_out_error, 1)})"))
    for group in dict.fromkeys(c.max_num_seqs for c in ranking.candidates):
        rows = files.ranking_rows(ranking, group)
        if rows:
            print_table(f"predicted ranking ({files.group_label(group)})",
                        [Column(h, "right" if 3 <= i < 7 else "left",  # noqa: PLR2004
                                whole_lines=i >= 3)  # noqa: PLR2004
                         for i, h in enumerate(files.RANKING_HEADERS)], rows, keys=2)
            print_table(f"predicted fastest by category ({files.group_label(group)})",
                        [Column(h) for h in files.CATEGORY_RANKING_HEADERS],
                        files.category_ranking_rows(ranking, group), fallback="records")
    if any(c.exact is False for c in ranking.candidates):
        stdout.print(escape(files.UNRESOLVED_NOTE))
    notes = [*(f"draft model: {line}" for line in files.draft_source_lines(ranking)),
             *(f"not predicted: {line}" for line in files.skipped_lines(ranking))]
    for line in notes:
        stdout.print(escape(line))
    rows = files.confirmed_rows(result)
    if rows:
        print_table("predicted against measured (overall; residual = measured / predicted - 1)",
                    [Column(h, "right" if i >= 3 else "left", whole_lines=i >= 3)  # noqa: PLR2004
                     for i, h in enumerate(files.CONFIRMED_HEADERS)], rows, fallback="records")
    print_table("a setting per category",
                [Column(h) for h in files.CATEGORY_HEADERS], files.category_rows(result),
                fallback="records")
    for line in files.schedule_lines(result):
        stdout.print(escape(line))
    for failed in result.failed:
        stderr.print(escape(f"failed: {failed}"))
    for warning in result.warnings:
        stdout.print(f"[bold yellow]warning:[/] {escape(warning)}")
