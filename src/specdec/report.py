"""Reports: compare runs with their baseline and pick the best settings (data only).

``specdec report RUN_DIR...`` accepts batch folders (with ``batch.json``) and
single run folders.  Runs of one setting (model, strategy, swept values) are
its repeats; each setting is compared with the baseline (strategy ``none``) of
the same model and the same engine settings.  Speedups are reported two ways
(``docs/metrics.md``): Spec-Bench's ratio of mean per-request token rates, and
the ratio of total throughput.  Medians over repeats are shown with their
spread, so a difference inside the noise is not taken for a win.
:mod:`specdec.report_files` writes a report's files and :mod:`specdec.plots`
draws its plots.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attrs import field, frozen

from specdec import run_folder
from specdec.errors import SpecdecError
from specdec.formatting import percent
from specdec.lossless import LosslessResult, check
from specdec.metrics import spec_bench_mean_accepted_tokens_by_category, speedup
from specdec.records import ExperimentConfig, GroupMetrics, RequestRecord, RunSummary
from specdec.serialization import unstructure
from specdec.study import BASELINE, INDEX_FILE, NEAR_TIE_THRESHOLD, read_index

OVERALL = "overall"
NOISE_FLOOR = 0.03
"""Smallest relative margin within which two settings count as equally fast."""


@frozen
class Run:
    """One finished run folder."""

    folder: Path
    setting: str
    repeat: int
    labels: dict[str, Any]
    config: ExperimentConfig
    summary: RunSummary

    @functools.cached_property
    def outputs(self) -> run_folder.RunOutputs:
        """What the comparison reads of its requests, read once (the fastest way)."""
        return run_folder.read_outputs(self.folder)

    @functools.cached_property
    def records(self) -> tuple[RequestRecord, ...]:
        """Every request record, read once on first use.

        Only the checks that compare outputs need them; the summary comes without.
        """
        return tuple(run_folder.read_records(self.folder))

    @property
    def strategy(self) -> str:
        """The strategy's name."""
        return self.config.strategy.name

    def group(self, category: str) -> GroupMetrics | None:
        """The metrics of one category, or overall."""
        if category == OVERALL:
            return self.summary.overall
        return self.summary.categories.get(category)

    def throughput(self, category: str) -> float | None:
        """Total tokens/s: the run's wall clock overall, summed request time per category."""
        if category == OVERALL:
            return self.summary.throughput_tokens_per_s
        group = self.group(category)
        return group.tokens_per_s_total if group else None


@frozen
class Spread:
    """Median over repeats, with the relative spread (max - min) / median."""

    median: float
    spread: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        """Summarise the values of the repeats (None if there are none)."""
        if not values:
            return None
        mid = statistics.median(values)
        spread = (max(values) - min(values)) / mid if mid else 0.0
        return cls(mid, spread, len(values))


@frozen
class Comparison:
    """One setting against its baseline, in one category."""

    setting: str
    category: str
    tokens_per_s_mean: Spread | None
    throughput: Spread | None
    speedup_spec_bench: float | None
    speedup_throughput: float | None
    acceptance_rate: float | None
    mean_acceptance_length: float | None
    spec_bench_accepted_tokens: float | None = None
    """Spec-Bench's "#Mean accepted tokens": output tokens per target forward step."""


@frozen
class Setting:
    """The repeats of one configuration."""

    name: str
    runs: tuple[Run, ...]

    @property
    def first(self) -> Run:
        """The first repeat (used for the lossless check)."""
        return min(self.runs, key=lambda r: r.repeat)

    @property
    def strategy(self) -> str:
        """The strategy's name."""
        return self.first.strategy

    def family(self, without: str) -> str:
        """The setting's name for people with one swept key left out (a plot's line).

        Settings that differ only in ``without`` share a family.
        """
        labels = [f"{k.rsplit('.', maxsplit=1)[-1]}={v}"
                  for k, v in self.first.labels.items() if k != without]
        return " ".join([self.first.config.model.rstrip("/").rsplit("/", maxsplit=1)[-1],
                         self.strategy, *labels])

    def engine_labels(self) -> dict[str, Any]:
        """Swept experiment keys (dotted paths), which a baseline must share."""
        return {k: v for k, v in self.first.labels.items() if "." in k}

    def values(self, category: str, which: str) -> list[float]:
        """A metric of every repeat, in one category."""
        out: list[float] = []
        for run in self.runs:
            if which == "throughput":
                value = run.throughput(category)
            else:
                group = run.group(category)
                value = group.tokens_per_s_mean if group else None
            if value is not None:
                out.append(value)
        return out


@frozen
class Report:
    """Everything ``specdec report`` shows and writes."""

    settings: tuple[Setting, ...]
    baselines: dict[str, str]
    categories: tuple[str, ...]
    comparisons: tuple[Comparison, ...]
    best: dict[str, dict[str, str]]
    lossless: dict[str, LosslessResult]
    failed: tuple[str, ...] = ()
    threshold: float = NEAR_TIE_THRESHOLD
    files: tuple[Path, ...] = field(factory=tuple)


def load_run(folder: Path, setting: str | None = None, repeat: int = 0,
             labels: dict[str, Any] | None = None) -> Run:
    """A finished run folder, read through :mod:`specdec.run_folder` (records on demand)."""
    if not run_folder.is_finished(folder):
        msg = f"{folder} holds no finished run (no {run_folder.METRICS_FILE})"
        raise SpecdecError(msg)
    stored = run_folder.read_run(folder)
    return Run(folder, setting or folder.name, repeat, labels or {}, stored.config,
               stored.summary)


def collect_runs(folders: Sequence[Path]) -> tuple[list[Run], list[str], float]:
    """Runs from batch and run folders; also the failed items and the near-tie threshold."""
    runs: list[Run] = []
    failed: list[str] = []
    threshold = NEAR_TIE_THRESHOLD
    for folder in folders:
        run_folder.check_folder(folder)
        if (folder / INDEX_FILE).is_file():
            index = read_index(folder)
            threshold = index.near_tie_threshold
            for item in index.items:
                if item.status == "done":
                    runs.append(load_run(folder / item.name, item.setting, item.repeat,
                                         dict(item.labels)))
                else:
                    failed.append(f"{item.name}: {item.status}"
                                  + (f" ({item.error})" if item.error else ""))
        else:
            runs.append(load_run(folder))
    if not runs:
        msg = "no finished runs in " + ", ".join(str(f) for f in folders)
        raise SpecdecError(msg)
    return runs, failed, threshold


IGNORED_FOR_PAIRING = ("strategy", "name", "sinks")
IGNORED_ENGINE_KEYS = ("url", "port", "served_model_name", "api_key_env")


def _context(setting: Setting) -> dict[str, Any]:
    """What a baseline must share with a setting: everything but the strategy (and names)."""
    data: dict[str, Any] = unstructure(setting.first.config)
    for key in IGNORED_FOR_PAIRING:
        data.pop(key, None)
    # Two servers (with and without speculation) differ in address, not in settings.
    data["engine"] = {k: v for k, v in data["engine"].items() if k not in IGNORED_ENGINE_KEYS}
    return data


def _baseline_for(setting: Setting, settings: Sequence[Setting]) -> Setting | None:
    """The baseline run under the same settings, else the model's first baseline."""
    candidates = [
        s for s in settings
        if s.strategy == BASELINE and s.first.config.model == setting.first.config.model
        and s.engine_labels() == setting.engine_labels()
    ]
    context = _context(setting)
    same = [s for s in candidates if _context(s) == context]
    chosen = same or candidates
    return chosen[0] if chosen else None


def _simplicity(setting: Setting) -> tuple[int, float]:
    # The baseline is simplest; then fewer speculative tokens and smaller swept values.
    options = setting.first.config.strategy.options
    numbers = [v for v in options.values() if isinstance(v, int | float)]
    numbers += [v for v in setting.first.labels.values() if isinstance(v, int | float)]
    return (0 if setting.strategy == BASELINE else 1, float(sum(numbers)))


def best_settings(
    settings: Sequence[Setting], categories: Sequence[str]
) -> dict[str, dict[str, str]]:
    """Per category, the fastest setting by median, preferring a simpler one within the noise.

    Two settings are within the noise when the slower's median is within
    ``max(NOISE_FLOOR, spread of the fastest)`` of the fastest's.
    """
    best: dict[str, dict[str, str]] = {}
    for category in categories:
        scored = [(s, Spread.of(s.values(category, "tokens_per_s_mean"))) for s in settings]
        ranked = [(s, sp) for s, sp in scored if sp is not None]
        if not ranked:
            continue
        top, top_spread = max(ranked, key=lambda x: x[1].median)
        margin = max(NOISE_FLOOR, top_spread.spread)
        within = [s for s, sp in ranked if sp.median >= top_spread.median * (1 - margin)]
        chosen = min(within, key=_simplicity)
        best[category] = {
            "setting": chosen.name,
            "fastest": top.name,
            "margin": percent(margin, 1),
        }
    return best


def build_report(folders: Sequence[Path], threshold: float | None = None) -> Report:
    """Compare every setting with its baseline, per category and overall."""
    runs, failed, index_threshold = collect_runs(folders)
    threshold = index_threshold if threshold is None else threshold
    by_setting: dict[str, list[Run]] = {}
    for run in runs:
        by_setting.setdefault(run.setting, []).append(run)
    settings = tuple(Setting(name, tuple(rs)) for name, rs in by_setting.items())
    categories = sorted({c for r in runs for c in r.summary.categories})
    all_categories = (*categories, OVERALL)
    comparisons: list[Comparison] = []
    baselines: dict[str, str] = {}
    lossless: dict[str, LosslessResult] = {}
    for setting in settings:
        baseline = _baseline_for(setting, settings)
        if baseline is not None:
            baselines[setting.name] = baseline.name
            if setting is not baseline:
                lossless[setting.name] = check(setting.first.outputs.requests,
                                               baseline.first.outputs.requests,
                                               threshold)
        accepted, accepted_overall = spec_bench_mean_accepted_tokens_by_category(
            setting.first.outputs.accept_totals)
        accepted[OVERALL] = accepted_overall
        for category in all_categories:
            rate = Spread.of(setting.values(category, "tokens_per_s_mean"))
            total = Spread.of(setting.values(category, "throughput"))
            base_rate = base_total = None
            if baseline is not None:
                base_rate = Spread.of(baseline.values(category, "tokens_per_s_mean"))
                base_total = Spread.of(baseline.values(category, "throughput"))
            group = setting.first.group(category)
            spec = None
            if group is not None:
                spec = (setting.first.summary.engine_spec
                        if category == OVERALL and setting.first.summary.engine_spec
                        else group.spec)
            comparisons.append(Comparison(
                setting.name, category, rate, total,
                speedup(rate.median, base_rate.median) if rate and base_rate else None,
                speedup(total.median, base_total.median) if total and base_total else None,
                spec.acceptance_rate if spec else None,
                spec.mean_acceptance_length if spec else None,
                accepted.get(category),
            ))
    return Report(settings, baselines, all_categories, tuple(comparisons),
                  best_settings(settings, all_categories), lossless, tuple(failed), threshold)
