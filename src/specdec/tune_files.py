"""A tune's files for people: ``prediction.md``, the plot, and the tables the terminal shows.

:mod:`specdec.tune` runs the phases and writes the data (``calibration.json``,
``ranking.json``, ``prediction.json``); this module renders a
:class:`~specdec.tune.TuneResult`, as :mod:`specdec.report_files` renders a report.
Numbers look as everywhere else (:mod:`specdec.formatting`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import orjson

from specdec.formatting import MISSING, interval_text, number, percent
from specdec.plots import KLine, draw_prediction_over_k
from specdec.report import OVERALL
from specdec.tune import Check, Predicted, Ranking, TuneResult, ranked

PREDICTION_MD = "prediction.md"
PLOT_FILE = "predicted_speedup_over_k.png"


def _speedup_text(candidate: Predicted, category: str = OVERALL) -> str:
    shown = number(candidate.speedup(category), 2, "x")
    upper = candidate.upper_speedup(category)
    return shown if upper is None else f"{shown} (to {number(upper, 2, 'x')})"


def group_label(max_num_seqs: int | None) -> str:
    """How tables name a batch size: ``max_num_seqs=4``, or the base's mode when not swept."""
    return "as base" if max_num_seqs is None else f"max_num_seqs={max_num_seqs}"


RANKING_HEADERS = ("rank", "setting", "source", "predicted speedup", "throughput speedup",
                   "acceptance rate", "mean acceptance length", "step time at k")


UNRESOLVED_NOTE = ("replay*: a last step's draft ran past the baseline's known tokens and "
                   "was counted rejected; the engine may accept more there (docs/prediction.md, "
                   "'The last step').")


def ranking_rows(ranking: Ranking, max_num_seqs: int | None) -> list[tuple[str, ...]]:
    """The ranking of one batch size as table rows (:data:`RANKING_HEADERS`).

    A replay that left a last step unresolved shows as ``replay*`` (:data:`UNRESOLVED_NOTE`);
    the last column says whether k lies within the k its drafter's step time was calibrated at.
    """
    rows: list[tuple[str, ...]] = []
    for place, candidate in enumerate(ranked(ranking.candidates, OVERALL, max_num_seqs), 1):
        overall = candidate.predictions[OVERALL]
        source = f"{candidate.source}*" if candidate.exact is False else candidate.source
        rows.append((str(place), candidate.setting, source, _speedup_text(candidate),
                     number(overall.speedup_total, 2, "x"), percent(candidate.acceptance_rate),
                     number(candidate.mean_acceptance_length),
                     "extrapolated" if overall.extrapolated else "calibrated"))
    return rows


TOP = 3
"""Candidates the per-category ranking shows."""


def category_ranking_rows(ranking: Ranking, max_num_seqs: int | None) -> list[tuple[str, ...]]:
    """Per category (and overall), the :data:`TOP` fastest predicted settings with speedups."""
    rows: list[tuple[str, ...]] = []
    for category in (*ranking.categories, OVERALL):
        top = ranked(ranking.candidates, category, max_num_seqs)[:TOP]
        cells = [f"{c.setting} {_speedup_text(c, category)}" for c in top]
        rows.append((category, *cells, *(MISSING,) * (TOP - len(cells))))
    return rows


CATEGORY_RANKING_HEADERS = ("category", *(f"predicted #{n}" for n in range(1, TOP + 1)))


def skipped_lines(ranking: Ranking) -> list[str]:
    """One line per candidate that was not predicted, with the reason."""
    return [f"{c.setting}: {c.note}" for c in ranking.candidates if c.source == "skipped"]


def draft_source_lines(ranking: Ranking) -> list[str]:
    """One line per draft-model family (and batch size): how its candidates were predicted.

    Draft replay's note (continuations computed), or the agreement fallback's, which says
    why draft replay did not run.
    """
    seen: dict[tuple[str, int | None], str] = {}
    for c in ranking.candidates:
        if c.source in ("draft replay", "agreement") and c.note:
            seen.setdefault((c.family, c.max_num_seqs), f"{c.family} ({c.source}): {c.note}")
    return list(seen.values())


CONFIRMED_HEADERS = ("setting", "run as", "source", "predicted", "measured (95% interval)",
                     "residual", "throughput: predicted", "measured", "residual")


def confirmed_rows(result: TuneResult) -> list[tuple[str, ...]]:
    """Predicted against measured, overall, per setting run (:data:`CONFIRMED_HEADERS`)."""
    rows: list[tuple[str, ...]] = []
    for item in result.confirmed:
        check = item.speedup.get(OVERALL, Check(None, None))
        interval = check.interval
        predicted = number(check.predicted, 2, "x")
        if item.upper is not None:
            predicted += f" (to {number(item.upper, 2, 'x')})"
        rows.append((
            item.setting, ", ".join(item.roles), item.source, predicted,
            interval_text(check.measured, interval.low if interval else None,
                          interval.high if interval else None),
            _signed(check.residual), number(item.throughput.predicted, 2, "x"),
            number(item.throughput.measured, 2, "x"), _signed(item.throughput.residual)))
    return rows


def _signed(value: float | None) -> str:
    return MISSING if value is None else f"{value:+.1%}"


def category_rows(result: TuneResult) -> list[tuple[str, ...]]:
    """Per category: the measured best (the report's rule) and the predicted best."""
    return [(r.category, r.measured or MISSING, r.measured_speedup or MISSING,
             r.predicted or MISSING, number(r.predicted_speedup, 2, "x"),
             "yes" if r.confirmed else "no") for r in result.recommendations]


CATEGORY_HEADERS = ("category", "recommended (measured)", "its speedup", "predicted fastest",
                    "predicted", "predicted fastest was run")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


SOURCES_NOTE = (
    "Speedups are Spec-Bench's (ratio of mean per-request tokens/s over the baseline's); "
    "residual = measured / predicted - 1. Sources: replay (the drafter replayed over the "
    "baseline's tokens: exact counts), draft replay (a draft model replayed from its own "
    "greedy continuations of the baseline's prefixes: exact counts up to the draft's "
    "numerics), agreement (a draft model from its measured runs at "
    "other k; 'to' gives the bound with unknown positions accepted), measured counts (a "
    "method replay cannot draft, from its own calibration run: checks the cost model only). "
    "See docs/prediction.md, 'specdec tune'.")
PREDICT_ONLY_NOTE = ("Not confirmed (`--predict-only`): the calibration runs' rows are the "
                     "only measured ones.")
CATEGORY_NOTE = ("Recommended: the report's rule over the measured settings (a setting beats "
                 "the baseline only when its interval lies above 1; docs/studies.md).")
SCHEDULE_NOTE = ("Predicted, not measured as a schedule: each k is the fastest predicted at "
                 "that batch size's label (requests sent at once, at most max_num_seqs); "
                 "vLLM picks k by the batch it schedules at each step, which drains.")


def schedule_lines(result: TuneResult) -> list[str]:
    """One line per method's schedule, with the ``raw`` strategy's speculative_config."""
    lines = []
    for schedule in result.schedules:
        pairs = ", ".join(f"{s}: k={k}" for s, k in schedule.k_by_batch_size)
        entries = [list(e) for e in schedule.entries]
        lines.append(f"{schedule.family}: {pairs}; num_speculative_tokens_per_batch_size: "
                     f"{entries}")
        if schedule.speculative_config:
            config = orjson.dumps(dict(schedule.speculative_config)).decode()
            lines.append(f"  as strategy raw, speculative_config {config}")
        else:
            lines.append("  no k is predicted to beat the baseline at any batch size")
    return lines


def prediction_markdown(result: TuneResult) -> str:
    """``prediction.md``: the calibration, the ranking, predicted against measured, advice."""
    ranking = result.ranking
    lines = [f"# Tune {result.name}: predicted, then measured", "", SOURCES_NOTE, "",
             "## Cost model", ""]
    lines += _table(("batch size", "form", "held-out error"),
                    [(str(f.batch_size), f.form, percent(f.held_out_error, 1))
                     for f in result.fits])
    for group in dict.fromkeys(c.max_num_seqs for c in ranking.candidates):
        lines += [f"## Ranking ({group_label(group)})", ""]
        lines += _table(RANKING_HEADERS, ranking_rows(ranking, group))
        lines += ["By category:", ""]
        lines += _table(CATEGORY_RANKING_HEADERS, category_ranking_rows(ranking, group))
    if any(c.exact is False for c in ranking.candidates):
        lines += [UNRESOLVED_NOTE, ""]
    drafts = draft_source_lines(ranking)
    if drafts:
        lines += ["Draft models:", "", *(f"- {line}" for line in drafts), ""]
    skipped = skipped_lines(ranking)
    if skipped:
        lines += ["## Not predicted", "", *(f"- {line}" for line in skipped), ""]
    lines += [f"Replay and prediction took {ranking.predict_s:.1f} s.", "",
              "## Predicted against measured", ""]
    if result.predict_only:
        lines += [PREDICT_ONLY_NOTE, ""]
    lines += _table(CONFIRMED_HEADERS, confirmed_rows(result))
    lines += ["## A setting per category", "", CATEGORY_NOTE, ""]
    lines += _table(CATEGORY_HEADERS, category_rows(result))
    if result.schedules:
        lines += ["## A k per batch size (vLLM's dynamic speculation schedule)", "",
                  SCHEDULE_NOTE, "", *(f"  - {line.strip()}" if line.startswith(" ")
                                       else f"- {line}" for line in schedule_lines(result)), ""]
    if result.failed or result.warnings:
        lines += ["## Warnings", "", *(f"- failed: {f}" for f in result.failed),
                  *(f"- {w}" for w in result.warnings), ""]
    return "\n".join(lines)


def plot_lines(result: TuneResult) -> list[KLine]:
    """The plot's lines: per method (and batch size), predicted speedup over k, measured points."""
    measured = {(c.setting): c.speedup.get(OVERALL) for c in result.confirmed}
    lines: dict[tuple[str, int | None], list[Predicted]] = {}
    for candidate in result.ranking.candidates:
        if candidate.speedup() is not None or candidate.setting in measured:
            lines.setdefault((candidate.family, candidate.max_num_seqs), []).append(candidate)
    out = []
    for (family, group), candidates in lines.items():
        candidates.sort(key=lambda c: c.k)
        points = []
        for c in candidates:
            check = measured.get(c.setting)
            if check is not None and check.measured is not None:
                iv = check.interval
                points.append((c.k, check.measured, iv.low if iv else None,
                               iv.high if iv else None))
        label = family if group is None else f"{family}, {group_label(group)}"
        predicted = [(c.k, s) for c in candidates if (s := c.speedup()) is not None]
        upper = [(c.k, s) for c in candidates if (s := c.upper_speedup()) is not None]
        out.append(KLine(label, tuple(predicted), tuple(upper), tuple(points)))
    return out


def write_prediction(output: Path, result: TuneResult) -> list[Path]:
    """Write ``prediction.md`` and the plot of ``result`` into ``output``; the files written."""
    markdown = output / PREDICTION_MD
    markdown.write_text(prediction_markdown(result), encoding="utf-8")
    written = [markdown]
    plot = draw_prediction_over_k(plot_lines(result), output / PLOT_FILE)
    if plot is not None:
        written.append(plot)
    return written
