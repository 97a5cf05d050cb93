"""PNG plots of a report and of a tune's predictions, drawn with matplotlib (headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attrs import frozen

if TYPE_CHECKING:
    from specdec.concurrency import SweepLine
    from specdec.metrics import Slo
    from specdec.report import Report


def draw_all(report: Report, out: Path, sweep: Sequence[SweepLine] = (),
             slo: Slo | None = None) -> list[Path]:
    """Draw every plot the report's data supports; return the files written.

    ``sweep``: the concurrency sweep's lines (:func:`specdec.concurrency.concurrency_lines`),
    with goodput under ``slo`` (none: speedup only).
    """
    import matplotlib as mpl  # noqa: PLC0415 - heavy, only when drawing

    mpl.use("Agg")
    drawn = [
        _speedup_by_category(report, out / "speedup_by_category.png"),
        _acceptance_by_position(report, out / "acceptance_by_position.png"),
        _acceptance_histogram(report, out / "acceptance_length_histogram.png"),
        _throughput_vs_batch(report, out / "throughput_vs_batch_size.png"),
        _by_temperature(report, out / "acceptance_and_speedup_vs_temperature.png"),
        _by_concurrency(sweep, out / "speedup_and_goodput_vs_concurrency.png", slo),
    ]
    return [p for p in drawn if p is not None]


def _save(fig: Any, ax: Any, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _speedup_by_category(report: Report, path: Path) -> Path | None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    shown = report.shown()
    index = {(c.setting, c.category): c for c in report.comparisons}
    if not shown:
        return None
    categories = list(report.categories)
    width = 0.8 / len(shown)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(categories) + 2), 4.5))
    for i, setting in enumerate(shown):
        values, below, above = [], [], []
        for category in categories:
            comp = index.get((setting.name, category))
            value = (comp.speedup_spec_bench if comp else None) or 0.0
            interval = comp.speedup_spec_bench_interval if comp else None
            values.append(value)
            # Error bars from the interval's ends; none where there is no interval.
            below.append(value - interval.low if interval else 0.0)
            above.append(interval.high - value if interval else 0.0)
        xs = [x + (i - (len(shown) - 1) / 2) * width for x in range(len(categories))]
        ax.bar(xs, values, width, yerr=[below, above], capsize=3,
               error_kw={"linewidth": 0.8}, label=setting.display_name())
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    ax.set_ylabel("speedup (ratio of mean per-request tokens/s)")
    return _save(fig, ax, path, "Speedup over the baseline, by category (95% intervals)")


def _acceptance_by_position(report: Report, path: Path) -> Path | None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    longest = 0
    for setting in report.settings:
        values = setting.acceptance_per_position
        if not values:
            continue
        ax.plot(list(range(1, len(values) + 1)), list(values), marker="o", label=setting.name)
        longest = max(longest, len(values))
    if not longest:
        plt.close(fig)
        return None
    ax.set_xticks(range(1, longest + 1))
    ax.set_xlabel("draft position")
    ax.set_ylabel("share of drafts accepted at this position")
    ax.set_ylim(0, 1)
    return _save(fig, ax, path, "Acceptance by draft position")


def _acceptance_histogram(report: Report, path: Path) -> Path | None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = []
    for setting in report.settings:
        spec = setting.first.summary.overall.spec
        if spec is not None and any(spec.acceptance_length_histogram):
            rows.append((setting.name, spec.acceptance_length_histogram))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    width = 0.8 / len(rows)
    for i, (name, histogram) in enumerate(rows):
        total = sum(histogram)
        xs = [j + 1 + (i - (len(rows) - 1) / 2) * width for j in range(len(histogram))]
        ax.bar(xs, [h / total for h in histogram], width, label=name)
    ax.set_xticks(range(1, max(len(h) for _, h in rows) + 1))
    ax.set_xlabel("acceptance length (accepted draft tokens + 1)")
    ax.set_ylabel("share of drafts")
    return _save(fig, ax, path, "Acceptance-length histogram")


def _throughput_vs_batch(report: Report, path: Path) -> Path | None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from specdec.report import OVERALL  # noqa: PLC0415

    key = "engine.max_num_seqs"
    index = {(c.setting, c.category): c for c in report.comparisons}
    lines: dict[str, list[tuple[float, float]]] = {}
    for setting in report.settings:
        size = setting.first.labels.get(key)
        comparison = index.get((setting.name, OVERALL))
        if not isinstance(size, int | float) or comparison is None:
            continue
        if comparison.throughput is not None:
            # The report's own median over repeats, so plot and table agree.
            lines.setdefault(setting.family(without=key), []).append(
                (float(size), comparison.throughput.median))
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for family, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=family)
    ax.set_xscale("log", base=2)
    sizes = sorted({p[0] for points in lines.values() for p in points})
    ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
    ax.set_xlabel("max_num_seqs (batch size limit)")
    ax.set_ylabel("throughput (output tokens/s)")
    return _save(fig, ax, path, "Throughput against batch size")


TEMPERATURE = "generation.temperature"


def _by_temperature(report: Report, path: Path) -> Path | None:
    """Acceptance rate and Spec-Bench speedup against a swept temperature, a line per strategy.

    Each point is a setting's overall figure against the baseline at its own
    temperature, with its 95% interval as an error bar; drawn when
    ``generation.temperature`` was swept over speculative settings.
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from specdec.report import OVERALL  # noqa: PLC0415
    from specdec.scoring import BASELINE  # noqa: PLC0415

    index = {(c.setting, c.category): c for c in report.comparisons}
    lines: dict[str, list[tuple[float, Any]]] = {}
    for setting in report.settings:
        temperature = setting.first.labels.get(TEMPERATURE)
        comparison = index.get((setting.name, OVERALL))
        if (not isinstance(temperature, int | float) or comparison is None
                or setting.strategy == BASELINE or setting.is_aa):
            continue
        lines.setdefault(setting.family(without=TEMPERATURE), []).append(
            (float(temperature), comparison))
    if not lines:
        return None
    fig, (accept, speed) = plt.subplots(1, 2, figsize=(11.0, 4.2))
    for family, points in lines.items():
        points.sort(key=lambda p: p[0])
        xs = [t for t, _ in points]
        for ax, value, interval in (
                (accept, "acceptance_rate", "acceptance_rate_interval"),
                (speed, "speedup_spec_bench", "speedup_spec_bench_interval")):
            ys = [getattr(c, value) or 0.0 for _, c in points]
            bounds = [getattr(c, interval) for _, c in points]
            below = [y - b.low if b else 0.0 for y, b in zip(ys, bounds, strict=True)]
            above = [b.high - y if b else 0.0 for y, b in zip(ys, bounds, strict=True)]
            ax.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3, label=family)
    temperatures = sorted({t for points in lines.values() for t, _ in points})
    for ax in (accept, speed):
        ax.set_xticks(temperatures, [f"{t:g}" for t in temperatures])
        ax.set_xlabel("temperature")
    accept.set_ylabel("acceptance rate (accepted / draft tokens)")
    accept.set_ylim(0, 1)
    accept.set_title("Acceptance rate (95% intervals)")
    accept.legend(fontsize=7)
    speed.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    speed.set_ylabel("speedup over the baseline at that temperature")
    return _save(fig, speed, path, "Spec-Bench speedup (95% intervals)")



def _by_concurrency(lines: Sequence[SweepLine], path: Path, slo: Slo | None) -> Path | None:
    """Speedup (95% intervals) and, with an SLO, goodput against a swept concurrency.

    A line per speculative setting (:func:`specdec.concurrency.concurrency_lines`);
    goodput is drawn for the setting (solid) and its baseline at each point
    (dashed).  Drawn when ``engine.concurrency`` was swept.
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415

    if not lines:
        return None
    fig, axes = plt.subplots(1, 2 if slo else 1, figsize=(11.0 if slo else 6.4, 4.2),
                             squeeze=False)
    speed = axes[0][0]
    for line in lines:
        xs = [p.concurrency for p in line.points]
        ys = [p.speedup or 0.0 for p in line.points]
        below = [y - p.speedup_interval.low if p.speedup_interval else 0.0
                 for y, p in zip(ys, line.points, strict=True)]
        above = [p.speedup_interval.high - y if p.speedup_interval else 0.0
                 for y, p in zip(ys, line.points, strict=True)]
        drawn = speed.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3,
                               label=line.family)
        if slo:
            good = axes[0][1]
            color = drawn[0].get_color()
            good.plot(xs, [p.goodput.rate_per_s if p.goodput else 0.0 for p in line.points],
                      marker="o", color=color, label=line.family)
            good.plot(xs, [p.baseline_goodput.rate_per_s if p.baseline_goodput else 0.0
                           for p in line.points], marker="s", linestyle="--", color=color,
                      label=f"{line.family}: its baseline")
    levels = sorted({p.concurrency for line in lines for p in line.points})
    for ax in axes[0]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(level) for level in levels])
        ax.set_xlabel("concurrency (requests in flight)")
    speed.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    speed.set_ylabel("speedup over the baseline at that concurrency")
    if slo:
        good = axes[0][1]
        good.set_ylabel("goodput (requests/s meeting the SLO)")
        good.set_title("Goodput")
        good.legend(fontsize=7)
    return _save(fig, speed, path, "Spec-Bench speedup (95% intervals)")


@frozen
class KLine:
    """One method's line on the plot of speedup over k: predicted, and measured points.

    ``upper`` is an agreement prediction's optimistic bound (drawn as a band);
    ``measured`` holds (k, speedup, interval low, interval high).
    """

    label: str
    predicted: tuple[tuple[int, float], ...]
    upper: tuple[tuple[int, float], ...] = ()
    measured: tuple[tuple[int, float, float | None, float | None], ...] = ()


def draw_prediction_over_k(lines: Sequence[KLine], path: Path) -> Path | None:
    """Predicted speedup over k, one line per method, with the measured points on it.

    Measured points carry their 95% interval as error bars; None when there is no line.
    """
    import matplotlib as mpl  # noqa: PLC0415 - heavy, only when drawing

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    shown = [line for line in lines if line.predicted or line.measured]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    for index, line in enumerate(shown):
        color = f"C{index % 10}"
        if line.predicted:
            ax.plot([k for k, _ in line.predicted], [s for _, s in line.predicted], marker=".",
                    color=color, label=f"{line.label} (predicted)")
        if line.upper:
            low = dict(line.predicted)
            ks = [k for k, _ in line.upper if k in low]
            ax.fill_between(ks, [low[k] for k in ks], [dict(line.upper)[k] for k in ks],
                            color=color, alpha=0.15, linewidth=0)
        if line.measured:
            values = [m[1] for m in line.measured]
            below = [m[1] - m[2] if m[2] is not None else 0.0 for m in line.measured]
            above = [m[3] - m[1] if m[3] is not None else 0.0 for m in line.measured]
            ax.errorbar([m[0] for m in line.measured], values, yerr=[below, above], fmt="o",
                        color=color, capsize=3, markerfacecolor="white",
                        label=f"{line.label} (measured)")
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ks = sorted({k for line in shown for k, _ in line.predicted}
                | {int(m[0]) for line in shown for m in line.measured})
    ax.set_xticks(ks)
    ax.set_xlabel("num_speculative_tokens (k)")
    ax.set_ylabel("speedup over the baseline (Spec-Bench)")
    return _save(fig, ax, path, "Predicted speedup over k, measured points with 95% intervals")
