"""Confidence intervals (specdec.intervals) and the report's use of them, without vLLM.

The statistical tests are seeded simulations: they are the same on every run, and a
resampler that is unpaired, too narrow or blind to drift between runs fails them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from specdec import intervals, run_folder
from specdec.config import load_config
from specdec.intervals import (
    ACROSS_RUNS,
    WITHIN_RUN,
    Interval,
    RunSample,
    paired_speedup,
    request_ratio,
)
from specdec.metrics import summarise
from specdec.records import RequestRecord, SpecStats, TurnRecord
from specdec.report import AA_NAME, Contender, build_report, choose
from specdec.report_files import render_markdown, write_report
from specdec.serialization import write_json
from specdec.study import BatchIndex, ItemStatus

TRUE_RATIO = 1.5


def _sample(rates: np.ndarray[Any, Any], ids: list[str] | None = None) -> RunSample:
    """A run whose request i has rate ``rates[i]`` (tokens = rate, one second each)."""
    n = len(rates)
    zeros = np.zeros(n)
    return RunSample(tuple(ids or [f"q{i}" for i in range(n)]), ("c",) * n, rates,
                     rates.copy(), np.ones(n), zeros, zeros, zeros)


def _prompts(rng: np.random.Generator, n: int) -> tuple[np.ndarray[Any, Any], ...]:
    """Baseline and candidate rates of n prompts: prompt difficulty shared, noise not.

    The candidate is ``TRUE_RATIO`` times faster on average: its noise has mean 1, so
    the ratio of the population means is exactly ``TRUE_RATIO``.
    """
    difficulty = rng.lognormal(3.0, 0.4, n)
    sigma = 0.15
    noise = rng.lognormal(-sigma**2 / 2, sigma, (2, n))
    return difficulty * noise[0], TRUE_RATIO * difficulty * noise[1]


def test_paired_interval_covers_the_true_ratio_at_about_the_nominal_rate() -> None:
    """200 simulated batches of 50 prompts: the 95% interval covers 1.5 in 90-99% of them."""
    rng = np.random.default_rng(2026)
    covered = 0
    trials = 200
    for trial in range(trials):
        base, cand = _prompts(rng, 50)
        interval = paired_speedup([_sample(cand)], [_sample(base)], "spec_bench",
                                  resamples=1000, seed=trial)
        assert interval is not None
        assert interval.kind == WITHIN_RUN
        covered += interval.contains(TRUE_RATIO)
    assert 0.90 <= covered / trials <= 0.99


def test_pairing_keeps_a_prompt_s_two_measurements_together() -> None:
    """Shared prompt difficulty cancels in a paired interval: it is far narrower than the
    spread of the rates, and shuffling one side's ids (breaking the pairs) widens it."""
    rng = np.random.default_rng(1)
    base, cand = _prompts(rng, 60)
    paired = paired_speedup([_sample(cand)], [_sample(base)], "spec_bench")
    ids = [f"q{i}" for i in rng.permutation(60)]
    broken = paired_speedup([_sample(cand, ids)], [_sample(base)], "spec_bench")
    assert paired is not None
    assert broken is not None
    assert paired.estimate == pytest.approx(broken.estimate)
    assert paired.high - paired.low < 0.5 * (broken.high - broken.low)


def test_two_level_interval_sees_drift_between_runs() -> None:
    """Each run's machine speed drifts by ~10%; prompts vary little within a run.

    One run's interval (within-run only) is narrow; the two-level interval over 5
    repeats is wider, and it covers the true ratio where the within-run one misses it.
    """
    rng = np.random.default_rng(7)
    cands, bases = [], []
    for _ in range(5):
        base, cand = _prompts(rng, 40)
        drift = rng.lognormal(0.0, 0.1, 2)
        bases.append(_sample(base * drift[0]))
        cands.append(_sample(cand * drift[1]))
    within = paired_speedup(cands[:1], bases[:1], "spec_bench")
    across = paired_speedup(cands, bases, "spec_bench")
    assert within is not None
    assert across is not None
    assert (within.kind, across.kind) == (WITHIN_RUN, ACROSS_RUNS)
    assert across.high - across.low > 2 * (within.high - within.low)
    means = [c.rates.mean() for c in cands], [b.rates.mean() for b in bases]
    assert across.estimate == pytest.approx(np.mean(means[0]) / np.mean(means[1]))


def test_same_seed_same_interval_and_the_interval_says_how_it_was_made() -> None:
    """The bootstrap is seeded: the same data give the same ends; another seed moves them."""
    base, cand = _prompts(np.random.default_rng(3), 30)
    one = paired_speedup([_sample(cand)], [_sample(base)], "throughput", seed=5)
    again = paired_speedup([_sample(cand)], [_sample(base)], "throughput", seed=5)
    other = paired_speedup([_sample(cand)], [_sample(base)], "throughput", seed=6)
    assert one == again
    assert one is not None
    assert other is not None
    assert one.low != other.low
    assert (one.confidence, one.resamples, one.seed, one.method) == (0.95, 2000, 5, "percentile")


def test_acceptance_interval_is_token_weighted() -> None:
    """A ratio of sums: a request with many draft tokens weighs more than one with few."""
    n = 20
    accepted = np.array([9.0, 1.0] * (n // 2))
    draft_tokens = np.array([10.0, 10.0] * (n // 2))
    drafts = np.array([5.0, 5.0] * (n // 2))
    sample = RunSample(tuple(f"q{i}" for i in range(n)), ("c",) * n, np.ones(n), np.ones(n),
                       np.ones(n), accepted, draft_tokens, drafts)
    rate = request_ratio(sample, "acceptance_rate")
    length = request_ratio(sample, "mean_acceptance_length")
    assert rate is not None
    assert length is not None
    assert rate.estimate == pytest.approx(0.5)
    assert rate.low < 0.5 < rate.high
    assert length.estimate == pytest.approx(1 + 100 / 100)
    no_drafts = RunSample(sample.ids, sample.categories, sample.rates, sample.tokens,
                          sample.seconds, np.zeros(n), np.zeros(n), np.zeros(n))
    assert request_ratio(no_drafts, "acceptance_rate") is None


def _iv(estimate: float, low: float, high: float) -> Interval:
    return Interval(estimate, low, high, WITHIN_RUN)


BASE = Contender("none", (0, 0.0), None, baseline=True)


def test_rule_names_the_simplest_setting_that_overlaps_the_fastest() -> None:
    """k=4 is fastest, k=2's interval overlaps it: k=2 (simpler) is named."""
    k2 = Contender("k2", (1, 2.0), _iv(1.50, 1.35, 1.65))
    k4 = Contender("k4", (1, 4.0), _iv(1.58, 1.45, 1.70))
    picked = choose([BASE, k4, k2])
    assert picked is not None
    assert (picked[0].name, picked[1].name) == ("k2", "k4")


def test_rule_names_the_fastest_when_it_is_clearly_ahead() -> None:
    """k=4's interval lies above k=2's: k=4 is named although k=2 is simpler."""
    k2 = Contender("k2", (1, 2.0), _iv(1.20, 1.10, 1.30))
    k4 = Contender("k4", (1, 4.0), _iv(1.60, 1.45, 1.75))
    picked = choose([BASE, k2, k4])
    assert picked is not None
    assert picked[0].name == "k4"


def test_rule_keeps_the_baseline_unless_an_interval_lies_above_one() -> None:
    """A 1.3x estimate whose interval reaches below 1 does not beat the baseline."""
    k2 = Contender("k2", (1, 2.0), _iv(1.30, 0.97, 1.60))
    slow = Contender("k8", (1, 8.0), _iv(0.80, 0.70, 0.90))
    picked = choose([BASE, k2, slow])
    assert picked is not None
    assert (picked[0].name, picked[1].name) == ("none", "none")
    beats = Contender("k2", (1, 2.0), _iv(1.30, 1.02, 1.60))
    picked = choose([BASE, beats])
    assert picked is not None
    assert picked[0].name == "k2"
    assert choose([k2]) is None


def _records(rates: list[float], tokens: int = 20, fail: str | None = None) -> list[RequestRecord]:
    records = []
    for i, rate in enumerate(rates):
        ids = tuple(range(1, tokens + 1))
        spec = SpecStats(5, 10, 2 + i % 5, (3, 2), (1, 2, 2))
        turn = TurnRecord(prompt="q", output=" ".join(map(str, ids)), prompt_tokens=3,
                          output_tokens=tokens, ttft_s=0.0, decode_s=tokens / rate,
                          output_token_ids=ids, spec=spec)
        error = "EngineError: boom" if fail == f"q{i}" else None
        records.append(RequestRecord(f"q{i}", "qa" if i % 2 else "code",
                                     () if error else (turn,), error=error))
    return records


def _write_run(folder: Path, strategy: str, records: list[RequestRecord]) -> None:
    config = load_config(None, [f"strategy.name={strategy}", "sinks=[log]"])
    writer = run_folder.RunWriter(folder)
    writer.claim(config)
    writer.start(config, {"test": True})
    for record in records:
        writer.append(record)
    done = [r for r in records if r.error is None]
    writer.finish(summarise(records, sum(r.walltime_s for r in done), None), records)


def _batch(base: Path, runs: dict[str, tuple[str, list[RequestRecord]]]) -> Path:
    """A batch folder of one repeat per setting; a name ending in __aa is an A/A item."""
    items = []
    for name, (strategy, records) in runs.items():
        _write_run(base / name, strategy, records)
        labels = {"aa_check": True} if name.endswith("__aa") else {}
        items.append(ItemStatus(name, name, strategy, "smollm2-135m", 0, labels,
                                status="done"))
    write_json(base / "batch.json", BatchIndex("b", tuple(items)))
    return base


def _rates(seed: int, factor: float = 1.0, noise: float = 0.05) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(r) for r in factor * 20.0 * rng.lognormal(0.0, noise, 24)]


def test_report_intervals_match_the_run_figures_and_drop_failed_prompts(tmp_path: Path) -> None:
    """The estimate inside the interval is the ratio of the runs' own figures; a prompt that
    failed in the candidate is dropped from the pairing (so the estimate is over 23)."""
    base_records = _records(_rates(1))
    cand_records = _records(_rates(2, 1.6))
    folder = _batch(tmp_path / "b", {"none": ("none", base_records),
                                     "ngram": ("ngram", cand_records)})
    report = build_report([folder])
    overall = {c.setting: c for c in report.comparisons if c.category == "overall"}
    ngram = overall["ngram"]
    base_summary = report.settings[0].first.summary
    cand_summary = report.settings[1].first.summary
    assert ngram.speedup_spec_bench == pytest.approx(
        cand_summary.overall.tokens_per_s_mean / base_summary.overall.tokens_per_s_mean)
    assert ngram.speedup_throughput == pytest.approx(
        cand_summary.throughput_tokens_per_s / base_summary.throughput_tokens_per_s)
    assert ngram.speedup_spec_bench_interval is not None
    assert ngram.speedup_spec_bench_interval.above(1.0)
    assert ngram.acceptance_rate_interval is not None
    assert ngram.acceptance_rate_interval.contains(ngram.acceptance_rate or 0.0)
    assert report.best["overall"]["setting"] == "ngram"
    assert report.warnings == ()
    code = next(c for c in report.comparisons if (c.setting, c.category) == ("ngram", "code"))
    assert code.speedup_spec_bench_interval is not None

    failing = _batch(tmp_path / "f", {"none": ("none", base_records),
                                      "ngram": ("ngram", _records(_rates(2, 1.6), fail="q3"))})
    kept = [i for i in range(24) if i != 3]
    rates_b, rates_c = _rates(1), _rates(2, 1.6)
    expected = np.mean([rates_c[i] for i in kept]) / np.mean([rates_b[i] for i in kept])
    dropped = next(c for c in build_report([failing]).comparisons
                   if (c.setting, c.category) == ("ngram", "overall"))
    assert dropped.speedup_spec_bench == pytest.approx(expected)


def test_aa_row_is_compared_with_the_baseline_and_warns_when_it_excludes_one(
    tmp_path: Path,
) -> None:
    """The A/A item is never a baseline; its interval excluding 1.0 is a warning everywhere."""
    noisy = _batch(tmp_path / "noisy", {
        "none": ("none", _records(_rates(1))),
        "none__aa": ("none", _records(_rates(3, 0.8))),  # the machine slowed down by 20%
        "ngram": ("ngram", _records(_rates(2, 1.6))),
    })
    report = build_report([noisy])
    assert report.baselines == {"none": "none", "none__aa": "none", "ngram": "none"}
    aa = next(c for c in report.comparisons if (c.setting, c.category) == ("none__aa", "overall"))
    assert aa.aa
    assert aa.speedup_spec_bench_interval is not None
    assert aa.speedup_spec_bench_interval.high < 1.0
    assert report.best["overall"]["setting"] != "none__aa"
    assert any(w.startswith("the machine was too noisy for this verdict: the A/A interval [")
               and "excludes 1.0 (none__aa, overall, Spec-Bench" in w for w in report.warnings)
    text = render_markdown(report, [])
    assert "## Warnings" in text
    assert f"{AA_NAME}: none__aa" in text
    write_report(report, tmp_path / "out")
    data = (tmp_path / "out" / "report.json").read_text()
    assert "the machine was too noisy" in data
    assert '"kind": "within-run only"' in data

    quiet = _batch(tmp_path / "quiet", {
        "none": ("none", _records(_rates(1))),
        "none__aa": ("none", _records(_rates(3))),
    })
    calm = build_report([quiet])
    aa = next(c for c in calm.comparisons if (c.setting, c.category) == ("none__aa", "overall"))
    assert aa.speedup_spec_bench_interval is not None
    assert aa.speedup_spec_bench_interval.contains(1.0)
    assert calm.warnings == ()
    assert calm.best["overall"]["setting"] == "none"


def test_report_with_repeats_pairs_repeat_r_with_repeat_r_across_runs(tmp_path: Path) -> None:
    """Three repeats of each: the interval is "across runs" and its estimate is the ratio of
    the repeats' mean figures; a candidate repeat without its baseline repeat is left out."""
    items = []
    figures: dict[str, list[float]] = {"none": [], "ngram": []}
    for strategy, factor in (("none", 1.0), ("ngram", 1.5)):
        for repeat in range(3 if strategy == "none" else 4):
            name = f"{strategy}__r{repeat}"
            rates = _rates(10 * repeat + len(strategy), factor * (1 + 0.05 * repeat))
            _write_run(tmp_path / name, strategy, _records(rates))
            if repeat < 3:
                figures[strategy].append(float(np.mean(rates)))
            items.append(ItemStatus(name, strategy, strategy, "smollm2-135m", repeat, {},
                                    status="done"))
    write_json(tmp_path / "batch.json", BatchIndex("b", tuple(items)))
    report = build_report([tmp_path])
    ngram = next(c for c in report.comparisons if (c.setting, c.category) == ("ngram", "overall"))
    interval = ngram.speedup_spec_bench_interval
    assert interval is not None
    assert interval.kind == ACROSS_RUNS
    assert interval.estimate == pytest.approx(np.mean(figures["ngram"]) / np.mean(figures["none"]))
    assert "across runs" in render_markdown(report, [])


def test_sample_from_the_run_folder_columns_equals_the_one_from_records(tmp_path: Path) -> None:
    """Reports resample metrics.json's per-request columns, parsing no record: same numbers."""
    records = _records(_rates(3), fail="q5")
    _write_run(tmp_path / "run", "ngram", records)
    outputs = run_folder.read_outputs(tmp_path / "run")
    elapsed = run_folder.read_summary(tmp_path / "run").elapsed_s
    from_columns = RunSample.of_outputs(outputs, elapsed)
    assert from_columns is not None
    from_records = RunSample.of(records, elapsed)
    assert from_columns.ids == from_records.ids
    assert from_columns.categories == from_records.categories
    assert from_columns.clock_scale == pytest.approx(from_records.clock_scale)
    for name in ("rates", "tokens", "seconds", "accepted", "draft_tokens", "drafts"):
        np.testing.assert_allclose(getattr(from_columns, name), getattr(from_records, name))
    assert "q5" not in from_columns.ids


def test_large_runs_resampled_in_groups_give_the_same_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Above GROUPS prompts, prompts are resampled in random groups: the interval is the one
    resampling every prompt gives, to within a few percent of its width."""
    base, cand = _prompts(np.random.default_rng(7), 8000)
    grouped = paired_speedup([_sample(cand)], [_sample(base)], "spec_bench")
    monkeypatch.setattr(intervals, "GROUPS", 10**9)
    every = paired_speedup([_sample(cand)], [_sample(base)], "spec_bench")
    assert grouped is not None
    assert every is not None
    assert grouped.estimate == pytest.approx(every.estimate)
    width = every.high - every.low
    assert abs(grouped.low - every.low) < 0.1 * width
    assert abs(grouped.high - every.high) < 0.1 * width


def test_simplicity_counts_speculative_tokens_and_swept_values_only() -> None:
    """ngram's lookup window does not make ngram k=2 more complex than EAGLE k=2 or k=3."""
    from types import SimpleNamespace
    from typing import cast

    from specdec.report import Setting, _simplicity

    def setting(strategy: str, labels: dict[str, object], **options: object) -> Setting:
        first = SimpleNamespace(config=SimpleNamespace(strategy=SimpleNamespace(options=options)),
                                labels=labels)
        return cast("Setting", SimpleNamespace(strategy=strategy, first=first))

    ngram = setting("ngram", {}, num_speculative_tokens=2, prompt_lookup_min=2,
                    prompt_lookup_max=4)
    eagle2 = setting("eagle", {}, num_speculative_tokens=2, model="head")
    eagle3 = setting("eagle", {}, num_speculative_tokens=3, model="head")
    assert _simplicity(ngram) == _simplicity(eagle2) < _simplicity(eagle3)
    assert _simplicity(setting("none", {})) < _simplicity(ngram)
    swept = setting("ngram", {"strategy.prompt_lookup_max": 5}, num_speculative_tokens=2)
    assert _simplicity(ngram) < _simplicity(swept)
