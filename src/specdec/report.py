"""Reports: compare runs with their baseline and pick the best settings (data only).

``specdec report RUN_DIR...`` accepts batch folders (with ``batch.json``) and
single run folders.  Runs of one setting (model, strategy, swept values) are
its repeats; each setting is compared with the baseline (strategy ``none``) of
the same model and the same engine settings.  Speedups are reported two ways
(``docs/metrics.md``): Spec-Bench's ratio of mean per-request token rates, and
the ratio of total throughput, each with a 95% confidence interval paired by
prompt (:mod:`specdec.intervals`): "within-run only" from one run of each,
"across runs" when both have repeats.  A setting beats its baseline only when
its interval lies above 1 (:func:`best_settings`).  An A/A setting (a second
baseline, ``aa_check`` in a study) is compared with the baseline like a
candidate and warns when its interval excludes 1.
:mod:`specdec.report_files` writes a report's files and :mod:`specdec.plots`
draws its plots.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import field, frozen

from specdec import run_folder, study_lossless
from specdec.errors import SpecdecError
from specdec.formatting import interval_text
from specdec.intervals import WITHIN_RUN, Interval, RunSample, paired_speedup, request_ratio
from specdec.lossless import (
    LosslessResult,
    SampledCheckSummary,
    check,
    not_compared_sampled,
    not_compared_synthetic,
)
from specdec.metrics import spec_bench_mean_accepted_tokens_by_category, speedup
from specdec.records import ExperimentConfig, GroupMetrics, RequestRecord, RunSummary
from specdec.scoring import SettingRun, baseline_for
from specdec.study import BASELINE, INDEX_FILE, NEAR_TIE_THRESHOLD, read_index

OVERALL = "overall"
AA_LABEL = "aa_check"
"""The label a study gives its A/A item (a second baseline run)."""
AA_NAME = "A/A (baseline vs baseline)"
AA_WARNING = "the machine was too noisy for this verdict: the A/A interval {} excludes 1.0"


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

    @functools.cached_property
    def host(self) -> str | None:
        """The machine the run ran on, as its provenance names it (None: not recorded)."""
        host = run_folder.read_provenance(self.folder).get("host")
        return host if isinstance(host, str) else None

    @functools.cached_property
    def sample(self) -> RunSample:
        """The succeeded requests as columns, for the confidence intervals."""
        from_columns = RunSample.of_outputs(self.outputs, self.summary.elapsed_s)
        if from_columns is not None:
            return from_columns
        return RunSample.of(self.records, self.summary.elapsed_s)

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
    """The Spec-Bench speedup: its interval's estimate when there is one."""
    speedup_throughput: float | None
    acceptance_rate: float | None
    mean_acceptance_length: float | None
    spec_bench_accepted_tokens: float | None = None
    """Spec-Bench's "#Mean accepted tokens": output tokens per target forward step."""
    speedup_spec_bench_interval: Interval | None = None
    speedup_throughput_interval: Interval | None = None
    acceptance_rate_interval: Interval | None = None
    """Over the first repeat's requests (its counts, even where the figure is the engine's)."""
    mean_acceptance_length_interval: Interval | None = None
    aa: bool = False
    """An A/A row: a second baseline run compared with the baseline."""


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

    @property
    def is_aa(self) -> bool:
        """An A/A setting: a second baseline, compared with the baseline, never one itself."""
        return self.first.labels.get(AA_LABEL) is True

    @property
    def is_synthetic(self) -> bool:
        """Run with vLLM's ``synthetic`` rejection sampler: lossy by design."""
        return self.first.config.synthetic_acceptance

    @property
    def is_baseline(self) -> bool:
        """A real baseline (strategy ``none``, not an A/A run)."""
        return self.strategy == BASELINE and not self.is_aa

    @property
    def acceptance_per_position(self) -> tuple[float, ...]:
        """The first repeat's acceptance by draft position (empty without speculation).

        From the engine's counters where they report it, else from the requests' own.
        """
        summary = self.first.summary
        for spec in (summary.engine_spec, summary.overall.spec):
            if spec is not None and spec.acceptance_per_position:
                return tuple(spec.acceptance_per_position)
        return ()

    def display_name(self) -> str:
        """How tables name the setting: A/A rows as what they compare."""
        return f"{AA_NAME}: {self.name}" if self.is_aa else self.name

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
    warnings: tuple[str, ...] = ()
    """A/A intervals that exclude 1.0: the verdicts are not to be trusted."""

    def best_is_baseline(self, category: str) -> bool:
        """Whether the best setting of ``category`` is a baseline: nothing beat it."""
        best = self.best.get(category)
        return best is not None and any(
            s.is_baseline and s.name == best["setting"] for s in self.settings)

    def shown(self) -> tuple[Setting, ...]:
        """The settings a speedup table shows: candidates and A/A rows, not baselines."""
        return tuple(s for s in self.settings if not s.is_baseline)


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


def collect_checks(folders: Sequence[Path]) -> tuple[dict[str, SampledCheckSummary], list[str]]:
    """The sampled checks of batch folders by setting, and a line for each that failed.

    Through each ``batch.json``'s ``lossless_checks`` (:mod:`specdec.study_lossless`);
    a failed check is listed with the failed runs and does not stop the report.
    """
    checks: dict[str, SampledCheckSummary] = {}
    for folder in folders:
        if (folder / INDEX_FILE).is_file():
            checks.update(study_lossless.summaries(folder, read_index(folder).lossless_checks))
    failed = [f"lossless check of {name}: failed ({summary.error})"
              for name, summary in checks.items() if summary.outcome is None]
    return checks, failed


def _baseline_for(setting: Setting, settings: Sequence[Setting]) -> Setting | None:
    """The setting's baseline, by the one pairing rule (:func:`specdec.scoring.baseline_for`).

    The scoring pass pairs with the same rule, so the margins it scored are
    the ones the check asks for.
    """
    def view(s: Setting) -> SettingRun:
        return SettingRun(s.name, s.first.config, s.first.labels)

    by_name = {s.name: s for s in settings}
    chosen = baseline_for(view(setting), [view(s) for s in settings])
    return by_name[chosen.name] if chosen is not None else None


def _simplicity(setting: Setting) -> tuple[float, ...]:
    # The baseline is simplest; then fewer speculative tokens and smaller swept values.
    # Only those: summing every numeric option made ngram k=2 (with its lookup window of
    # 2..4) rank as more complex than EAGLE k=2.
    options = setting.first.config.strategy.options
    k = options.get("num_speculative_tokens")
    swept = [v for v in setting.first.labels.values()
             if isinstance(v, int | float) and not isinstance(v, bool)]
    tokens = float(k) if isinstance(k, int | float) and not isinstance(k, bool) else 0.0
    return (0 if setting.strategy == BASELINE else 1, tokens, float(sum(swept)))


@frozen
class Contender:
    """One setting in the best-setting rule: its speedup interval and how simple it is."""

    name: str
    simplicity: tuple[float, ...]
    """Smaller is simpler: the baseline first, then fewer speculative tokens, smaller values."""
    interval: Interval | None
    """The speedup over its baseline; None for a baseline itself (exactly 1)."""
    baseline: bool = False

    @property
    def speedup(self) -> Interval:
        """The interval, a baseline's being [1, 1]."""
        if self.interval is None:
            return Interval(1.0, 1.0, 1.0, WITHIN_RUN)
        return self.interval


def choose(contenders: Sequence[Contender]) -> tuple[Contender, Contender] | None:
    """The best setting and the fastest one, by the rule of ``docs/studies.md``.

    A setting beats its baseline only when its speedup interval lies above 1;
    baselines (speedup exactly 1) and those settings are eligible.  The fastest
    is the eligible one with the highest estimate; among the eligible whose
    intervals overlap the fastest's, the simplest is named.  With no setting
    above 1 that is a baseline.  None when there is no eligible setting.
    """
    eligible = [c for c in contenders if c.baseline or (c.interval and c.interval.above(1.0))]
    if not eligible:
        return None
    fastest = max(eligible, key=lambda c: (c.speedup.estimate, [-x for x in c.simplicity]))
    within = [c for c in eligible if c.speedup.overlaps(fastest.speedup)]
    return min(within, key=lambda c: c.simplicity), fastest


def best_settings(
    settings: Sequence[Setting], comparisons: Sequence[Comparison],
) -> dict[str, dict[str, str]]:
    """Per category, the best setting by :func:`choose` on the Spec-Bench speedup intervals.

    A/A settings take no part: they are baselines run twice; nor do settings of
    synthetic acceptance (their outputs are not the target's).
    """
    by_category: dict[str, dict[str, Comparison]] = {}
    for comp in comparisons:
        by_category.setdefault(comp.category, {})[comp.setting] = comp
    best: dict[str, dict[str, str]] = {}
    for category, index in by_category.items():
        contenders = [
            Contender(s.name, _simplicity(s), index[s.name].speedup_spec_bench_interval,
                      baseline=s.is_baseline)
            for s in settings if not s.is_aa and not s.is_synthetic and s.name in index
        ]
        picked = choose(contenders)
        if picked is None:
            continue
        chosen, fastest = picked
        best[category] = {
            "setting": chosen.name,
            "fastest": fastest.name,
            "speedup": _interval_cell(chosen.speedup),
            "fastest_speedup": _interval_cell(fastest.speedup),
        }
    return best


def _interval_cell(interval: Interval) -> str:
    return interval_text(interval.estimate, interval.low, interval.high)


def paired_repeats(setting: Setting, baseline: Setting) -> list[tuple[Run, Run]]:
    """Repeat r of the setting with repeat r of its baseline (run next to it in a batch)."""
    base = {run.repeat: run for run in baseline.runs}
    return [(run, base[run.repeat]) for run in sorted(setting.runs, key=lambda r: r.repeat)
            if run.repeat in base]


def _speedups(setting: Setting, baseline: Setting | None,
              category: str) -> tuple[Interval | None, Interval | None]:
    if baseline is None or setting is baseline:
        return None, None
    pairs = paired_repeats(setting, baseline)
    name = None if category == OVERALL else category
    cand = [c.sample.category(name) for c, _ in pairs]
    base = [b.sample.category(name) for _, b in pairs]
    return (paired_speedup(cand, base, "spec_bench"),
            paired_speedup(cand, base, "throughput"))


def _aa_warnings(comparisons: Sequence[Comparison]) -> list[str]:
    """One warning per A/A setting and category (overall first) whose interval excludes 1.

    The Spec-Bench interval is quoted when it excludes 1 (the best-setting rule reads
    it), else the throughput one.
    """
    out = []
    rows = sorted((c for c in comparisons if c.aa), key=lambda c: c.category != OVERALL)
    for comp in rows:
        for label, iv in (("Spec-Bench", comp.speedup_spec_bench_interval),
                          ("throughput", comp.speedup_throughput_interval)):
            if iv is not None and not iv.contains(1.0):
                text = AA_WARNING.format(f"[{iv.low:.2f}, {iv.high:.2f}]")
                out.append(f"{text} ({comp.setting}, {comp.category}, {label} speedup, "
                           f"{iv.kind})")
                break
    return out


HOSTS_WARNING = ("{setting} and its baseline {baseline} ran on {count} machines ({hosts}): "
                 "differences between machines enter its speedup, and its interval includes "
                 "them only as far as the repeats spread over them (docs/scaling.md)")
"""What a report says when a comparison's runs ran on more than one machine (a Ray study)."""


def _host_warnings(settings: Sequence[Setting], baselines: Mapping[str, str]) -> list[str]:
    """One warning per setting whose runs and its baseline's did not all run on one host."""
    by_name = {s.name: s for s in settings}
    out = []
    for setting in settings:
        baseline = by_name.get(baselines.get(setting.name, ""))
        if baseline is None or baseline is setting:
            continue
        hosts = sorted({run.host for run in (*setting.runs, *baseline.runs)
                        if run.host is not None})
        if len(hosts) > 1:
            out.append(HOSTS_WARNING.format(setting=setting.name, baseline=baseline.name,
                                            count=len(hosts), hosts=", ".join(hosts)))
    return out


def _median_ratio(rate: Spread | None, base: Spread | None) -> float | None:
    return speedup(rate.median, base.median) if rate and base else None


def build_report(folders: Sequence[Path], threshold: float | None = None) -> Report:
    """Compare every setting with its baseline, per category and overall."""
    runs, failed, index_threshold = collect_runs(folders)
    sampled_checks, failed_checks = collect_checks(folders)
    failed += failed_checks
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
            temperature = max(setting.first.config.generation.temperature,
                              baseline.first.config.generation.temperature)
            if setting is not baseline and setting.is_synthetic:
                lossless[setting.name] = not_compared_synthetic(threshold)
            elif setting is not baseline and temperature > 0:
                lossless[setting.name] = not_compared_sampled(
                    threshold, temperature, sampled_checks.get(setting.name))
            elif setting is not baseline:
                lossless[setting.name] = check(
                    setting.first.outputs.requests, baseline.first.outputs.requests,
                    threshold, margins=run_folder.read_margins(baseline.first.folder))
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
            spec_bench, throughput = _speedups(setting, baseline, category)
            own = setting.first.sample.category(None if category == OVERALL else category)
            comparisons.append(Comparison(
                setting.name, category, rate, total,
                spec_bench.estimate if spec_bench else _median_ratio(rate, base_rate),
                throughput.estimate if throughput else _median_ratio(total, base_total),
                spec.acceptance_rate if spec else None,
                spec.mean_acceptance_length if spec else None,
                accepted.get(category),
                spec_bench, throughput,
                request_ratio(own, "acceptance_rate") if spec else None,
                request_ratio(own, "mean_acceptance_length") if spec else None,
                aa=setting.is_aa,
            ))
    return Report(settings, baselines, all_categories, tuple(comparisons),
                  best_settings(settings, comparisons), lossless, tuple(failed), threshold,
                  warnings=(*_aa_warnings(comparisons), *_host_warnings(settings, baselines)))
