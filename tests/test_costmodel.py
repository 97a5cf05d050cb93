"""The cost model: step counting, fitting a known cost law, choosing a form, predicting."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import numpy as np
import orjson
import pytest

from specdec import costmodel, run_folder
from specdec.config import load_config
from specdec.costmodel import (
    BatchFit,
    Calibration,
    MeasuredRun,
    calibrate,
    calibrate_folders,
    predict,
    predicted_records,
    read_calibration,
    residual,
    step_time,
    write_calibration,
)
from specdec.errors import CalibrationError, SpecdecError
from specdec.metrics import (
    decode_steps,
    spec_bench_accept_lengths,
    speedup,
    stats_from_histogram,
    summarise,
    turn_decode_steps,
)
from specdec.records import (
    EngineConfig,
    ExperimentConfig,
    RequestRecord,
    SpecStats,
    StrategyConfig,
    TurnRecord,
)

Law = Callable[[str, int, int], float]
"""Seconds of one decode step: (strategy, k, draft tokens checked) -> time."""

T0, C, C2 = 0.020, 0.002, 0.0
DRAFTER = {"ngram": 0.0002, "draft_model": 0.004}
OVERHEAD = {"ngram": 0.001, "draft_model": 0.003}


def linear_overhead_law(strategy: str, k: int, q: int) -> float:
    if strategy == "none":
        return T0
    return T0 + OVERHEAD[strategy] + C * q + DRAFTER[strategy] * k


def linear_law(strategy: str, k: int, q: int) -> float:
    if strategy == "none":
        return T0
    return T0 + C * q + DRAFTER[strategy] * k


def quadratic_law(strategy: str, k: int, q: int) -> float:
    return linear_overhead_law(strategy, k, q) + 0.003 * q * q


def fixed_law(strategy: str, k: int, q: int) -> float:
    return T0 + (0.0 if strategy == "none" else OVERHEAD[strategy] * 5)


def strategy_config(name: str, k: int) -> StrategyConfig:
    return StrategyConfig(name) if name == "none" else StrategyConfig(
        name, {"num_speculative_tokens": k})


def simulate_turn(rng: np.random.Generator, strategy: str, k: int, law: Law, *, budget: int,
                  match: float, accept: float = 0.6, noise: float = 0.02,
                  cut: bool = False) -> TurnRecord:
    """One greedy turn decoded step by step as vLLM counts it.

    The prefill gives the first token; each step drafts k tokens (n-gram: only when
    the lookup matches), accepts a prefix of them and adds the target's own token.
    With ``cut``, the last step's tokens past the budget are cut but stay counted, as
    in vLLM; without, the turn ends where its last step did (as if it stopped there),
    so that its steps are counted exactly.
    """
    produced, decode, draft_tokens = 1, 0.0, 0
    histogram = [0] * (k + 1)
    per_step: list[int] = []
    while produced < budget:
        q = 0 if strategy == "none" or (strategy == "ngram" and rng.random() > match) else k
        accepted = 0
        while accepted < q and rng.random() < accept:
            accepted += 1
        if q:
            histogram[accepted] += 1
            per_step.append(accepted)
            draft_tokens += q
        produced += 1 + accepted
        decode += law(strategy, k, q)
    decode *= 1 + noise * rng.standard_normal()
    spec = None if strategy == "none" else stats_from_histogram(histogram, draft_tokens,
                                                                per_step)
    return TurnRecord(prompt="q", output="a", prompt_tokens=20,
                      output_tokens=budget if cut else produced,
                      ttft_s=0.05 * (1.5 if strategy == "draft_model" else 1.0),
                      decode_s=decode, spec=spec)


def simulate_run(seed: int, strategy: str, k: int, law: Law, *, requests: int = 24,
                 run_noise: float = 0.003, folder: str | None = None) -> MeasuredRun:
    """A run of ``requests`` one-turn requests; prompts keep their n-gram match rate.

    Every turn's time has 2% noise of its own and the run's ``run_noise`` in common
    (one factor for the whole run, as a busier machine would make it)."""
    rng = np.random.default_rng(seed)
    prompts = np.random.default_rng(0)
    budgets = prompts.integers(40, 129, requests)
    matches = prompts.uniform(0.05, 0.95, requests)
    factor = 1 + run_noise * rng.standard_normal()
    records = []
    for i in range(requests):
        turn = simulate_turn(rng, strategy, k, law, budget=int(budgets[i]),
                             match=float(matches[i]))
        records.append(RequestRecord(f"q{i}", "qa", (attrs.evolve(
            turn, decode_s=turn.decode_s * factor),)))
    config = ExperimentConfig(strategy=strategy_config(strategy, k))
    return MeasuredRun(folder or f"runs/{strategy}-k{k}-{seed}", f"id-{seed}", config,
                       tuple(records), {"vllm": "0.32.0", "device": "cpu", "cpu_count": 2})


def calibration_set(law: Law, ks: Sequence[int] = (1, 2, 4), seed: int = 100) -> list[MeasuredRun]:
    """Two baselines, and n-gram and a draft model at each of ``ks``."""
    runs = [simulate_run(seed + 1, "none", 0, law), simulate_run(seed + 2, "none", 0, law)]
    seed += 10
    for strategy in ("ngram", "draft_model"):
        for k in ks:
            runs.append(simulate_run(seed, strategy, k, law))
            seed += 1
    return runs


def turn(output_tokens: int, spec: SpecStats | None = None, decode_s: float = 1.0,
         ttft_s: float = 0.1) -> TurnRecord:
    return TurnRecord(prompt="q", output="a", prompt_tokens=3, output_tokens=output_tokens,
                      ttft_s=ttft_s, decode_s=decode_s, spec=spec)


# -- counting steps ---------------------------------------------------------------


def test_decode_steps_count_each_step_once() -> None:
    """steps = output - 1 - accepted: the prefill gave the first token, each step 1 + accepted."""
    # 12 tokens: the prefill's, three drafts accepting 3, 0 and 2, and 3 steps without a draft.
    spec = stats_from_histogram([1, 0, 1, 1], 9, [3, 0, 2])
    assert decode_steps(12, spec) == 6
    assert decode_steps(12, None) == 11
    assert decode_steps(1, None) == 0
    assert decode_steps(0, spec) == 0


def test_decode_steps_when_the_last_step_is_cut() -> None:
    """A last step counted before max_tokens cut it: every step carried a draft."""
    # Two drafts accepting 3 each would give 1 + 4 + 4 = 9 tokens; the budget kept 7.
    spec = stats_from_histogram([0, 0, 0, 2], 6, [3, 3])
    assert decode_steps(7, spec) == 2


@pytest.mark.parametrize(("output_tokens", "histogram", "per_step"), [
    (12, [1, 0, 1, 1], [3, 0, 2]), (7, [0, 0, 0, 2], [3, 3]),
    (30, [5, 2, 0, 1], [0] * 5 + [1, 1, 3]), (2, [1], [0]), (5, [0, 0, 0, 0], []),
])
def test_decode_steps_match_spec_bench_accept_lengths(output_tokens: int, histogram: list[int],
                                                      per_step: list[int]) -> None:
    """The steps are Spec-Bench's accept-length entries after the prefill's, one formula."""
    record = turn(output_tokens, stats_from_histogram(histogram, 3 * sum(histogram), per_step))
    assert turn_decode_steps(record) == len(spec_bench_accept_lengths(record)) - 1


def test_simulated_turns_count_their_true_steps() -> None:
    """The simulator's own step count is what decode_steps recovers, up to k short when the
    last step was cut and the turn also had steps without a draft."""
    rng = np.random.default_rng(3)
    short = 0
    for strategy, k in (("none", 0), ("ngram", 3), ("draft_model", 2)) * 20:
        whole = simulate_turn(rng, strategy, k, lambda _s, _k, _q: 1.0, budget=100, match=0.5,
                              noise=0)
        assert turn_decode_steps(whole) == whole.decode_s
        cut = simulate_turn(rng, strategy, k, lambda _s, _k, _q: 1.0, budget=100, match=0.5,
                            noise=0, cut=True)
        assert 0 <= cut.decode_s - turn_decode_steps(cut) <= k
        assert strategy == "ngram" or cut.decode_s == turn_decode_steps(cut)
        short += cut.decode_s > turn_decode_steps(cut)
    assert short > 0


# -- fitting a known cost law -----------------------------------------------------------


def test_a_known_cost_law_is_recovered() -> None:
    """Synthetic runs from t0 + o[s] + c*q + d[s]*k with 2% noise give back its coefficients."""
    fit = calibrate(calibration_set(linear_overhead_law)).fit_for(1)
    form = next(f for f in fit.forms if f.name == "linear_overhead")
    got = form.coefficients
    assert got["step"] == pytest.approx(T0, rel=0.02)
    assert got["verify"] == pytest.approx(C, rel=0.1)
    assert got["drafter[draft_model]"] == pytest.approx(DRAFTER["draft_model"], rel=0.1)
    assert got["overhead[draft_model]"] == pytest.approx(OVERHEAD["draft_model"], abs=5e-4)
    assert got["overhead[ngram]"] == pytest.approx(OVERHEAD["ngram"], abs=5e-4)
    assert got["drafter[ngram]"] == pytest.approx(DRAFTER["ngram"], abs=2e-4)
    assert fit.form in {"linear_overhead", "quadratic"}
    assert all(abs(r.held_out_residual) < 0.03 for r in fit.runs)


def test_calibration_records_its_runs_and_settings() -> None:
    runs = calibration_set(linear_overhead_law)
    calibration = calibrate(runs)
    fit = calibration.fit_for(1)
    assert [r.folder for r in fit.runs] == [r.folder for r in runs]
    assert fit.calibrated_k == {"draft_model": (1, 2, 4), "ngram": (1, 2, 4)}
    assert fit.ttft_ratio == pytest.approx({"none": 1.0, "ngram": 1.0, "draft_model": 1.5})
    assert calibration.model == runs[0].config.model
    assert calibration.engine == runs[0].config.engine
    assert (calibration.vllm, calibration.device, calibration.cpu_count) == ("0.32.0", "cpu", 2)
    assert {f.name for f in fit.forms} == {f.name for f in costmodel.FORMS}


@pytest.mark.parametrize(("law", "expected"), [
    (fixed_law, "fixed"), (linear_law, "linear"), (linear_overhead_law, "linear_overhead"),
    (quadratic_law, "quadratic"),
])
def test_model_selection_picks_the_form_the_data_came_from(law: Law, expected: str) -> None:
    """Held-out runs choose the form of the law that made the data (the simplest that fits).

    A choice made on noisy runs is itself a draw: it is checked on five sets of runs, of
    which at least four must choose right (with 0.3% noise per run; at 1%, as much as
    the effects of k here, a set in ten chooses a nesting form).
    """
    chosen = [calibrate(calibration_set(law, seed=seed)).fit_for(1).form
              for seed in range(100, 600, 100)]
    assert chosen.count(expected) >= 4, chosen


def test_forms_that_cannot_be_held_out_say_why() -> None:
    """With a draft model at two k only, leaving one out leaves overhead and drafter confounded."""
    runs = [r for r in calibration_set(linear_law) if "draft_model-k4" not in r.folder]
    fit = calibrate(runs).fit_for(1)
    notes = {f.name: f.note for f in fit.forms}
    assert notes["linear"] is None
    assert "cannot tell apart overhead[draft_model] and drafter[draft_model]" in str(
        notes["linear_overhead"])
    assert fit.form == "linear"


# -- errors -------------------------------------------------------------------------


def test_a_speculative_run_without_counts_is_refused() -> None:
    runs = calibration_set(linear_law)
    bare = attrs.evolve(runs[2], records=tuple(
        attrs.evolve(r, turns=tuple(attrs.evolve(t, spec=None) for t in r.turns))
        for r in runs[2].records))
    with pytest.raises(CalibrationError, match=r"request 'q0' of this ngram run has no "
                                               r"speculative counts"):
        calibrate([*runs[:2], bare, *runs[3:]])


def test_a_run_without_decode_steps_is_refused() -> None:
    runs = calibration_set(linear_law)
    short = attrs.evolve(runs[0], records=tuple(
        attrs.evolve(r, turns=(turn(1),)) for r in runs[0].records))
    with pytest.raises(CalibrationError, match="has no decode step: every turn produced at "
                                               "most one token"):
        calibrate([short, *runs[1:]])


def test_a_single_run_is_refused() -> None:
    with pytest.raises(CalibrationError, match=r"one run only at batch size 1 .* cannot show "
                                               r"how the step time changes with k"):
        calibrate([simulate_run(1, "none", 0, linear_law)])


def test_one_k_per_strategy_cannot_be_tested() -> None:
    """A baseline and n-gram at one k: no form survives leaving a run out, and it says so."""
    runs = [simulate_run(1, "none", 0, linear_law), simulate_run(2, "ngram", 3, linear_law)]
    with pytest.raises(CalibrationError) as caught:
        calibrate(runs)
    message = str(caught.value)
    assert "no candidate form of the step time can be tested on held-out runs" in message
    without_baseline = ("fixed: without runs/none-k0-1 (none, k=0): these runs cannot tell "
                        "apart step and overhead[ngram]")
    assert without_baseline in message
    one_k = "linear_overhead: these runs cannot tell apart overhead[ngram] and drafter[ngram]"
    assert one_k in message
    assert "two or more num_speculative_tokens" in message


def test_no_baseline_and_no_speculation_are_refused() -> None:
    spec_only = [simulate_run(2, "ngram", 3, linear_law), simulate_run(3, "ngram", 1, linear_law)]
    with pytest.raises(CalibrationError, match=r"no baseline run \(strategy none\)"):
        calibrate(spec_only)
    baselines = [simulate_run(1, "none", 0, linear_law), simulate_run(2, "none", 0, linear_law)]
    with pytest.raises(CalibrationError, match="no speculative run at batch size 1"):
        calibrate(baselines)
    with pytest.raises(CalibrationError, match="no runs to calibrate on"):
        calibrate([])


def test_runs_with_other_settings_are_refused() -> None:
    runs = calibration_set(linear_law)
    eager = attrs.evolve(runs[3], config=attrs.evolve(
        runs[3].config, engine=EngineConfig(enforce_eager=True)))
    with pytest.raises(CalibrationError, match=r"engine\.enforce_eager \(False / True\)"):
        calibrate([*runs[:3], eager, *runs[4:]])


def test_a_strategy_without_k_is_refused() -> None:
    with pytest.raises(CalibrationError, match=r"set strategy\.num_speculative_tokens"):
        costmodel.speculative_tokens(StrategyConfig("suffix", {"num_speculative_tokens": None}))


# -- batch sizes ----------------------------------------------------------------------


def test_batch_sizes() -> None:
    sequential = ExperimentConfig()
    batch = ExperimentConfig(mode="batch")
    capped = ExperimentConfig(mode="batch", engine=EngineConfig(max_num_seqs=4))
    server = ExperimentConfig(engine=EngineConfig(backend="server", concurrency=3))
    assert [costmodel.batch_size(c, 10) for c in (sequential, batch, capped, server)] == [
        1, 10, 4, 3]
    assert costmodel.batch_size(batch, 2) == 2
    rated = ExperimentConfig(engine=EngineConfig(backend="server", request_rate=2.0))
    with pytest.raises(CalibrationError, match="no fixed number of requests in flight"):
        costmodel.batch_size(rated, 10)


def test_each_batch_size_is_fitted_apart_and_never_interpolated() -> None:
    def batched(run: MeasuredRun) -> MeasuredRun:
        slower = tuple(attrs.evolve(r, turns=tuple(attrs.evolve(t, decode_s=t.decode_s * 3)
                                                   for t in r.turns)) for r in run.records)
        return attrs.evolve(run, folder=run.folder + "-batch", records=slower,
                            config=attrs.evolve(run.config, mode="batch"))

    runs = calibration_set(linear_law)
    calibration = calibrate([*runs, *(batched(r) for r in runs)])
    assert [f.batch_size for f in calibration.fits] == [1, 24]
    assert calibration.fit_for(24).coefficients["step"] == pytest.approx(
        3 * calibration.fit_for(1).coefficients["step"], rel=1e-6)
    with pytest.raises(CalibrationError, match=r"no runs at batch size 8 \(it has 1, 24\)"):
        calibration.fit_for(8)


# -- prediction -----------------------------------------------------------------------


def hand_calibration() -> Calibration:
    fit = BatchFit(
        batch_size=1, form="linear",
        coefficients={"step": 0.02, "verify": 0.002, "drafter[ngram]": 0.001},
        ttft_ratio={"none": 1.0, "ngram": 1.2}, calibrated_k={"ngram": (2, 4)},
        runs=(), forms=(),
    )
    return Calibration(model="smollm2-135m", engine=EngineConfig(), fits=(fit,))


def test_prediction_matches_a_hand_computation() -> None:
    """Steps from the replayed counts, step time from the fit, rates as metrics.py has them."""
    baseline = [
        RequestRecord("a", "qa", (turn(11, decode_s=0.25, ttft_s=0.05),)),
        RequestRecord("b", "qa", (turn(21, decode_s=0.5, ttft_s=0.1),)),
        RequestRecord("gone", "qa", (), error="EngineError: boom"),
    ]
    # a: 10 tokens after the prefill; 4 drafts of k=3 claim 8 accepted, more than fit (the
    #    last step was cut), so 4 steps, all drafted, 12 tokens checked.
    # b: 20 tokens after the prefill; 5 drafts accept 10 -> 10 steps (5 without a draft),
    #    15 tokens checked.
    replayed = {"a": [stats_from_histogram([1, 0, 1, 2], 12, [0, 3, 2, 3])],
                "b": [stats_from_histogram([1, 0, 2, 2], 15, [3, 3, 2, 2, 0])]}
    a_decode = 4 * 0.02 + 12 * 0.002 + 4 * 3 * 0.001   # 0.116
    b_decode = 10 * 0.02 + 15 * 0.002 + 10 * 3 * 0.001  # 0.26
    a_rate, b_rate = 11 / (0.05 * 1.2 + a_decode), 21 / (0.1 * 1.2 + b_decode)
    base_a, base_b = 11 / 0.3, 21 / 0.6

    ngram = StrategyConfig("ngram", {"num_speculative_tokens": 3})
    prediction = predict(hand_calibration(), ngram, baseline, replayed)

    assert prediction.steps == 14
    assert prediction.decode_s == pytest.approx(a_decode + b_decode)
    assert prediction.tokens_per_step == pytest.approx(30 / 14)
    assert prediction.step_s == pytest.approx((a_decode + b_decode) / 14)
    assert prediction.tokens_per_s_mean == pytest.approx((a_rate + b_rate) / 2)
    assert prediction.baseline_tokens_per_s_mean == pytest.approx((base_a + base_b) / 2)
    assert prediction.speedup == pytest.approx((a_rate + b_rate) / (base_a + base_b))
    assert prediction.speedup_total == pytest.approx(
        (32 / (0.18 + a_decode + b_decode)) / (32 / 0.9))
    assert prediction.requests == 2
    assert not prediction.extrapolated
    assert predict(hand_calibration(), StrategyConfig(
        "ngram", {"num_speculative_tokens": 8}), baseline, {
            "a": [SpecStats()], "b": [SpecStats()]}).extrapolated


def test_predicted_records_summarise_like_a_run() -> None:
    """The predicted records go through metrics.summarise like measured ones."""
    baseline = [RequestRecord("a", "qa", (turn(11, decode_s=0.25), turn(6, decode_s=0.1)))]
    replayed = {"a": [stats_from_histogram([1, 0, 1, 2], 12, [0, 3, 2, 3]), SpecStats()]}
    records = predicted_records(hand_calibration(), StrategyConfig(
        "ngram", {"num_speculative_tokens": 3}), baseline, replayed)
    second = records[0].turns[1]
    assert second.decode_s == pytest.approx(5 * 0.02 + 5 * 3 * 0.001)
    assert second.spec == SpecStats()
    assert summarise(records, 1.0, None).overall.spec is not None


def test_the_baseline_predicts_itself() -> None:
    """Strategy none needs no replayed counts: each step costs t0."""
    baseline = [RequestRecord("a", "qa", (turn(11, decode_s=0.25),))]
    prediction = predict(hand_calibration(), StrategyConfig(), baseline)
    assert prediction.decode_s == pytest.approx(10 * 0.02)
    assert prediction.tokens_per_step == 1


def test_step_time_of_the_chosen_form() -> None:
    fit = hand_calibration().fit_for(1)
    ngram = StrategyConfig("ngram", {"num_speculative_tokens": 4})
    assert step_time(fit, ngram, 4) == pytest.approx(0.02 + 4 * 0.002 + 4 * 0.001)
    assert step_time(fit, ngram, 0) == pytest.approx(0.02 + 4 * 0.001)


def test_prediction_errors() -> None:
    calibration = hand_calibration()
    baseline = [RequestRecord("a", "qa", (turn(11),))]
    draft = StrategyConfig("draft_model", {"model": "d", "num_speculative_tokens": 3})
    with pytest.raises(CalibrationError, match=r"no runs of draft_model\(model=d\) \(it has "
                                               r"ngram\)"):
        predict(calibration, draft, baseline, {"a": [SpecStats()]})
    ngram = StrategyConfig("ngram", {"num_speculative_tokens": 3})
    with pytest.raises(CalibrationError, match="no replayed counts of baseline request 'a'"):
        predict(calibration, ngram, baseline, {})
    with pytest.raises(CalibrationError, match="has 1 turns but 2 replayed counts"):
        predict(calibration, ngram, baseline, {"a": [SpecStats(), SpecStats()]})
    with pytest.raises(CalibrationError, match="requests the baseline did not answer"):
        predict(calibration, ngram, baseline, {"a": [SpecStats()], "z": [SpecStats()]})
    with pytest.raises(CalibrationError, match="no runs at batch size 4"):
        predict(calibration, ngram, baseline, {"a": [SpecStats()]}, size=4)


def test_a_calibrated_prediction_matches_a_run_of_the_same_law() -> None:
    """End to end: calibrate on synthetic runs, predict a k it never ran, compare with a run."""
    calibration = calibrate(calibration_set(linear_overhead_law))
    baseline = simulate_run(1, "none", 0, linear_overhead_law)
    measured = simulate_run(99, "draft_model", 3, linear_overhead_law)
    replayed = {r.id: [t.spec or SpecStats() for t in r.turns] for r in measured.records}
    prediction = predict(calibration, StrategyConfig(
        "draft_model", {"num_speculative_tokens": 3}), baseline.records, replayed)
    measured_speedup = speedup(summarise(measured.records, 1.0, None).overall.tokens_per_s_mean,
                               prediction.baseline_tokens_per_s_mean)
    assert measured_speedup is not None
    assert prediction.speedup is not None
    assert abs(residual(measured_speedup, prediction.speedup)) < 0.03


def test_residual() -> None:
    assert residual(1.1, 1.0) == pytest.approx(0.1)
    assert residual(0.9, 1.0) == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="above 0"):
        residual(1.0, 0.0)


def test_prediction_refuses_other_settings() -> None:
    costmodel.require_same_settings(hand_calibration(), ExperimentConfig())
    with pytest.raises(CalibrationError, match=r"engine\.dtype \('auto' / 'float32'\)"):
        costmodel.require_same_settings(hand_calibration(), ExperimentConfig(
            engine=EngineConfig(dtype="float32")))


# -- storing a calibration ----------------------------------------------------------------


def test_a_calibration_round_trips_through_json(tmp_path: Path) -> None:
    calibration = calibrate(calibration_set(linear_overhead_law))
    path = tmp_path / "calibration.json"
    write_calibration(path, calibration)
    assert read_calibration(path) == calibration


def test_reading_a_calibration_is_strict(tmp_path: Path) -> None:
    """A number in quotes is not a number, nor a number a string; the path is named."""
    path = tmp_path / "calibration.json"
    write_calibration(path, hand_calibration())
    data = orjson.loads(path.read_bytes())
    data["fits"][0]["coefficients"]["step"] = "0.02"
    path.write_bytes(orjson.dumps(data))
    with pytest.raises(CalibrationError, match=r"write the number without quotes @ "
                                               r"\$\.fits\[0\]\.coefficients"):
        read_calibration(path)
    data["fits"][0]["coefficients"]["step"] = 0.02
    data["model"] = 135
    path.write_bytes(orjson.dumps(data))
    with pytest.raises(CalibrationError, match=r"expected a string, got 135.* @ \$\.model"):
        read_calibration(path)
    data["model"] = "m"
    data["schema_version"] = 99
    path.write_bytes(orjson.dumps(data))
    with pytest.raises(CalibrationError, match="schema_version 99"):
        read_calibration(path)
    with pytest.raises(CalibrationError, match="does not exist"):
        read_calibration(tmp_path / "missing.json")


# -- run folders ----------------------------------------------------------------------------


def write_run(folder: Path, run: MeasuredRun) -> Path:
    strategy = run.config.strategy
    overrides = [f"strategy.name={strategy.name}", "sinks=[log]"]
    overrides += [f"strategy.{key}={value}" for key, value in strategy.options.items()]
    config = load_config(None, overrides)
    writer = run_folder.RunWriter(folder)
    writer.claim(config)
    writer.start(config, {"test": True})
    for record in run.records:
        writer.append(record)
    writer.finish(summarise(list(run.records), 1.0, None), list(run.records))
    return folder


def test_calibrate_folders_reads_finished_runs(tmp_path: Path) -> None:
    runs = calibration_set(linear_law, ks=(1, 2, 4))
    folders = [write_run(tmp_path / f"run{i}", run) for i, run in enumerate(runs)]
    from_folders = calibrate_folders(folders)
    fit = from_folders.fit_for(1)
    assert [r.folder for r in fit.runs] == [str(f) for f in folders]
    assert all(r.run_id for r in fit.runs)
    assert fit.coefficients == calibrate(runs).fit_for(1).coefficients
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(SpecdecError, match="holds no finished run"):
        calibrate_folders([tmp_path / "unfinished"])


def test_a_sweep_of_max_num_seqs_calibrates_each_batch_size() -> None:
    """Runs at max_num_seqs 2 and 4 differ only in the setting that makes their batch size:
    calibrated together, one fit each; a prediction's config at either size is accepted, one
    with another dtype is not."""
    def at(run: MeasuredRun, seqs: int) -> MeasuredRun:
        config = attrs.evolve(run.config, mode="batch",
                              engine=attrs.evolve(run.config.engine, max_num_seqs=seqs))
        return attrs.evolve(run, folder=f"{run.folder}-{seqs}", config=config)

    runs = calibration_set(linear_law)
    calibration = calibrate([*(at(r, 2) for r in runs), *(at(r, 4) for r in runs)])
    assert [f.batch_size for f in calibration.fits] == [2, 4]
    swept = ExperimentConfig(mode="batch", engine=EngineConfig(max_num_seqs=4))
    costmodel.require_same_settings(calibration, swept)
    with pytest.raises(CalibrationError, match=r"engine\.dtype"):
        costmodel.require_same_settings(calibration, ExperimentConfig(
            engine=EngineConfig(dtype="float32", max_num_seqs=4)))
