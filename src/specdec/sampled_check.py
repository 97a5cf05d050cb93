"""``specdec lossless``: the sampled lossless check end to end, engines included.

For every prompt, three arms each draw ``samples`` seeded continuations of the
first ``tokens`` tokens, with the same sampling settings (``top_p``, ``top_k``):

- ``baseline``: no speculation, at the temperature checked;
- ``strategy``: the strategy under test, at that temperature;
- ``control``: no speculation, at the control temperature (default: 0.1
  above), the positive control.

The baseline engine draws the baseline and control arms, then the strategy's
engine draws its own (one engine at a time, each closed before the next
starts).  :mod:`specdec.sampled_lossless` compares baseline with strategy, and
baseline with control; the check passes when no difference is found for the
strategy and the control's difference is found.

Seeds.  Sample ``i`` of prompt ``p`` in arm ``a`` is drawn with the seed
``derive_seed(seed, a, p, i)`` (:func:`~specdec.engines.requests.derive_seed`),
one request per seed.  Each arm has its own seeds on purpose: under one seed,
vLLM's baseline and its speculative decoding can draw correlated, even
identical, samples (the same random stream), and the two-sample test assumes
independent arms; correlated arms would hide a difference, identical ones
would pass anything.  A rerun with the same ``seed`` asks for the same samples
(identical where the engine is deterministic).

Every sample and seed is written to ``samples.json`` beside the verdict
(``lossless.json``), so a finding can be examined and recomputed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import orjson
import structlog
from attrs import frozen

from specdec.engines import engine_for
from specdec.engines.requests import derive_seed
from specdec.errors import SpecdecError, UsageError
from specdec.interfaces import EngineFactory, SampleRequest, SampleRun
from specdec.provenance import collect, now
from specdec.records import (
    CONTROL_STEP,
    SCHEMA_VERSION,
    ExperimentConfig,
    SampledCheckSettings,
    SpecStats,
    StrategyConfig,
)
from specdec.runner import prepare_run
from specdec.sampled_lossless import SampledVerdict, compare_arms
from specdec.serialization import problems, structure, write_json

log = structlog.get_logger("specdec.lossless")

RESULT_FILE = "lossless.json"
SAMPLES_FILE = "samples.json"
BASELINE, STRATEGY, CONTROL = "baseline", "strategy", "control"

Outcome = Literal["pass", "difference", "inconclusive"]


@frozen
class ArmSamples:
    """One arm's samples by prompt id, with the seed of each (``derive_seed(seed, arm, id, i)``)."""

    arm: str
    temperature: float
    samples: Mapping[str, tuple[tuple[int, ...], ...]]
    seeds: Mapping[str, tuple[int, ...]]
    sampling_s: float


@frozen
class SampledCheckResult:
    """``lossless.json``: the settings, what ran, the verdict and what it means.

    ``config`` is the strategy's resolved experiment (its ``generation`` is
    the sampling the arms used); ``speculation`` the strategy's speculative
    counters while it sampled (None without speculation); ``lines`` the
    verdict as printed.
    """

    settings: SampledCheckSettings
    config: ExperimentConfig
    speculative_config: Mapping[str, Any] | None
    prompts: tuple[str, ...]
    verdict: SampledVerdict
    outcome: Outcome
    lines: tuple[str, ...]
    speculation: SpecStats | None
    sampling_s: Mapping[str, float]
    provenance: Mapping[str, Any]
    schema_version: int = SCHEMA_VERSION


def arm_seeds(seed: int, arm: str, prompt: str, count: int) -> tuple[int, ...]:
    """The seeds of one arm's samples of one prompt (each arm its own, see the module)."""
    return tuple(derive_seed(seed, arm, prompt, i) for i in range(count))


def sampled_config(config: ExperimentConfig, settings: SampledCheckSettings) -> ExperimentConfig:
    """``config`` sampling as the check does: its temperature, top-p, top-k, ``tokens`` each."""
    generation = attrs.evolve(config.generation, temperature=settings.temperature,
                              top_p=settings.top_p, top_k=settings.top_k,
                              max_tokens=settings.tokens, logprobs=None)
    return attrs.evolve(config, generation=generation)


def _check_settings(settings: SampledCheckSettings) -> None:
    if settings.control == settings.temperature:
        msg = (f"the control temperature ({settings.control:g}) equals the temperature checked: "
               "the positive control needs another, e.g. --control-temperature "
               f"{settings.temperature + CONTROL_STEP:g}")
        raise UsageError(msg)


def _draw(engine_factory: EngineFactory, config: ExperimentConfig, model: Path | str,
          speculative: Mapping[str, Any] | None, *, prompts: Sequence[tuple[str, Any]],
          arms: Sequence[tuple[str, float]], settings: SampledCheckSettings,
          ids: dict[str, tuple[int, ...]]) -> tuple[list[ArmSamples], SpecStats | None]:
    """Start one engine, draw each of ``arms`` (name, temperature) on it, close it.

    ``ids`` holds each prompt's token ids; filled from this engine if empty.
    """
    engine = engine_factory(config, model, speculative)
    engine.start()
    try:
        if not ids:
            ids.update({pid: engine.prompt_token_ids(conv, []) for pid, conv in prompts})
        drawn: list[ArmSamples] = []
        counters: SpecStats | None = None
        for arm, temperature in arms:
            seeds = {pid: arm_seeds(settings.seed, arm, pid, settings.samples)
                     for pid, _ in prompts}
            requests = [SampleRequest(ids[pid], seeds[pid], settings.tokens, temperature,
                                      settings.top_p, settings.top_k) for pid, _ in prompts]
            log.info("sampling", arm=arm, temperature=temperature, prompts=len(prompts),
                     samples=settings.samples * len(prompts), tokens=settings.tokens)
            began = time.perf_counter()
            run: SampleRun = engine.sample(requests)
            elapsed = time.perf_counter() - began
            counters = run.counters
            drawn.append(ArmSamples(arm, temperature,
                                    {pid: s for (pid, _), s in zip(prompts, run.samples,
                                                                   strict=True)},
                                    seeds, elapsed))
    finally:
        engine.close()
    return drawn, counters


def _outcome(verdict: SampledVerdict, speculative: Mapping[str, Any] | None,
             speculation: SpecStats | None) -> tuple[Outcome, list[str]]:
    """The outcome and the lines that say it, with what speculation did while sampling."""
    outcome: Outcome = verdict.outcome
    lines = verdict.lines()
    if speculative is None:
        lines.append("the strategy speculates nothing (no speculative_config): this compares "
                     "the baseline with itself")
    elif speculation is not None:
        lines.append(f"while sampling, the strategy drafted {speculation.num_draft_tokens} "
                     f"tokens and {speculation.num_accepted_tokens} were accepted")
        if speculation.num_draft_tokens == 0:
            lines.append("no token was drafted, so speculation was not tested: choose prompts "
                         "(or more tokens) where the strategy proposes drafts")
            outcome = "difference" if outcome == "difference" else "inconclusive"
    return outcome, lines


def run_check(config: ExperimentConfig, settings: SampledCheckSettings,
              output: Path | None = None, *,
              engine_factory: EngineFactory = engine_for) -> SampledCheckResult:
    """Draw the three arms, compare them, and write the result into ``output`` if given.

    ``config`` names the model, the strategy, the prompts (its benchmark
    section; each conversation's first turn is sampled) and the engine; its
    sampling is replaced by ``settings``' (:func:`sampled_config`).  Writes
    ``lossless.json`` and ``samples.json`` into ``output``.
    """
    _check_settings(settings)
    sampled = sampled_config(config, settings)
    baseline_config = attrs.evolve(sampled, strategy=StrategyConfig("none"))
    prepared = prepare_run(sampled)
    prepared_base = prepare_run(baseline_config)
    prompts = [(c.id, c) for c in prepared_base.conversations]
    if not prompts:
        msg = "the benchmark selection is empty: there is no prompt to sample"
        raise UsageError(msg)
    started = now()
    ids: dict[str, tuple[int, ...]] = {}
    arms, _ = _draw(engine_factory, prepared_base.config, prepared_base.model_path, None,
                    prompts=prompts, settings=settings, ids=ids,
                    arms=[(BASELINE, settings.temperature), (CONTROL, settings.control)])
    strategy_arms, speculation = _draw(
        engine_factory, prepared.config, prepared.model_path, prepared.speculative_config,
        prompts=prompts, settings=settings, ids=ids, arms=[(STRATEGY, settings.temperature)])
    by_arm = {a.arm: a for a in [*arms, *strategy_arms]}
    strategy_name = prepared.config.strategy.name
    verdict = SampledVerdict(
        strategy=compare_arms(by_arm[BASELINE].samples, by_arm[STRATEGY].samples,
                              length=settings.tokens, alpha=settings.alpha,
                              power=settings.power, seed=settings.seed,
                              names=(f"baseline at T={settings.temperature:g}",
                                     f"{strategy_name} at T={settings.temperature:g}")),
        control=compare_arms(by_arm[BASELINE].samples, by_arm[CONTROL].samples,
                             length=settings.tokens, alpha=settings.alpha,
                             power=settings.power, seed=settings.seed,
                             names=(f"baseline at T={settings.temperature:g}",
                                    f"baseline at T={settings.control:g}")))
    outcome, lines = _outcome(verdict, prepared.speculative_config, speculation)
    provenance = {**collect(prepared.capabilities), "started_at": started,
                  "finished_at": now(), "model_path": str(prepared.model_path)}
    result = SampledCheckResult(
        settings=settings, config=prepared.config,
        speculative_config=prepared.speculative_config,
        prompts=tuple(pid for pid, _ in prompts), verdict=verdict, outcome=outcome,
        lines=tuple(lines), speculation=speculation,
        sampling_s={a.arm: a.sampling_s for a in by_arm.values()}, provenance=provenance)
    if output is not None:
        write_result(output, result, list(by_arm.values()))
    return result


def write_result(output: Path, result: SampledCheckResult, arms: Sequence[ArmSamples]) -> None:
    """``lossless.json`` (the result) and ``samples.json`` (every arm's samples and seeds)."""
    if output.exists() and not output.is_dir():
        msg = f"--output {output} is a file, not a folder: choose a folder (it is created)"
        raise UsageError(msg)
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / RESULT_FILE, result)
    write_json(output / SAMPLES_FILE, {"schema_version": SCHEMA_VERSION, "arms": list(arms)})



def read_result(output: Path) -> SampledCheckResult:
    """The ``lossless.json`` that :func:`write_result` wrote into ``output``.

    Raises:
        SpecdecError: there is none (the check has not finished), or it is not what we write.
    """
    path = output / RESULT_FILE
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        msg = f"{output} holds no finished sampled check (no {RESULT_FILE})"
        raise SpecdecError(msg) from None
    except orjson.JSONDecodeError as exc:
        msg = f"{path} is damaged (not valid JSON: {exc}); run the check again"
        raise SpecdecError(msg) from exc
    try:
        return structure(data, SampledCheckResult)
    except Exception as exc:  # every structuring failure means the file is not what we wrote
        msg = f"{path} is damaged ({'; '.join(problems(exc))}); run the check again"
        raise SpecdecError(msg) from exc
