"""``specdec lossless`` end to end on the stand-in engine (no vLLM): arms, seeds, files, exits."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from specdec import cli, registry
from specdec.config import load_config
from specdec.interfaces import Capabilities
from specdec.records import ExperimentConfig, SampledCheckSettings, SpecStats
from specdec.sampled_check import (
    BASELINE,
    CONTROL,
    RESULT_FILE,
    SAMPLES_FILE,
    STRATEGY,
    _outcome,
    arm_seeds,
    run_check,
)
from specdec.serialization import structure

from .test_runner import StandInEngine

NGRAM = ["strategy.name=ngram", "strategy.num_speculative_tokens=3", "benchmark.limit=4"]
SEED = 1
"""With no difference, 5% of seeds raise a false alarm by design; seed 0 is one of them here."""


class StandInBackend:
    """The stand-in engine as an engine plugin whose vLLM offers ngram."""

    name = "stand-in"
    plugin_api_version = 1

    def capabilities(self, config: ExperimentConfig) -> Capabilities:
        return Capabilities("stand-in", vllm_version="0.32.0",
                            speculative_methods=frozenset({"ngram"}),
                            speculative_config_fields=frozenset(
                                {"method", "num_speculative_tokens", "prompt_lookup_min",
                                 "prompt_lookup_max"}), device="cpu", source="a test")

    def create(self, config: ExperimentConfig, model_path: Path | str,
               speculative_config: Mapping[str, Any] | None) -> StandInEngine:
        return StandInEngine(config, model_path, speculative_config)


@pytest.fixture(autouse=True)
def _stand_in() -> None:
    StandInEngine.reset()
    registry.engines.add("stand-in", StandInBackend)


def _config(*extra: str) -> ExperimentConfig:
    return load_config(None, [*NGRAM, "engine.backend=stand-in", *extra])


def test_a_lossless_strategy_passes_with_the_control_seen(tmp_path: Path) -> None:
    """Same distribution for the strategy, a visible control: pass, both files written.

    Each arm draws its own seeds (arm_seeds), the baseline and control on one
    engine, the strategy on its own; samples.json holds every sample and seed.
    """
    settings = SampledCheckSettings(samples=300, tokens=2, control_temperature=2.0, seed=SEED)
    result = run_check(_config(), settings, tmp_path / "out", engine_factory=StandInEngine)
    assert result.outcome == "pass", result.lines
    assert not result.verdict.strategy.detected
    assert result.verdict.control.detected
    assert result.lines[0].startswith("ngram at T=0.8 vs baseline at T=0.8: no difference "
                                      "detected; a total-variation distance above ")
    assert "the strategy drafted" in result.lines[-1]
    assert result.config.generation.temperature == 0.8
    assert result.config.generation.max_tokens == 2
    written = structure(orjson.loads((tmp_path / "out" / RESULT_FILE).read_bytes()),
                        type(result))
    assert written.verdict == result.verdict
    samples = orjson.loads((tmp_path / "out" / SAMPLES_FILE).read_bytes())
    arms = {a["arm"]: a for a in samples["arms"]}
    assert sorted(arms) == sorted([BASELINE, CONTROL, STRATEGY])
    prompt = result.prompts[0]
    for arm in arms.values():
        assert arm["seeds"][prompt] == list(arm_seeds(SEED, arm["arm"], prompt, 300))
        assert len(arm["samples"][prompt]) == 300
    every = [seed for a in arms.values() for seed in a["seeds"][prompt]]
    assert len(set(every)) == len(every)  # no seed shared between arms (or samples)


def test_a_lossy_strategy_is_a_difference() -> None:
    """A strategy that flattens the distribution is found, with the cell and its TV named."""
    StandInEngine.flatten_by_tokens = {3: 1.6}
    result = run_check(_config(), SampledCheckSettings(samples=300, tokens=2,
                                                       control_temperature=2.0, seed=SEED),
                       engine_factory=StandInEngine)
    assert result.outcome == "difference"
    assert result.lines[0].startswith("ngram at T=0.8 vs baseline at T=0.8: difference "
                                      "detected: ")


def test_an_unseen_control_is_inconclusive_and_says_so() -> None:
    """A control too close to see makes the check inconclusive, saying its pass means little."""
    result = run_check(_config(), SampledCheckSettings(samples=50, tokens=1,
                                                       control_temperature=0.81),
                       engine_factory=StandInEngine)
    assert result.outcome == "inconclusive"
    assert any("could not see the difference between baseline at T=0.8 and baseline at "
               "T=0.81; its pass means little" in line for line in result.lines)


def test_nothing_drafted_is_inconclusive() -> None:
    """A strategy that drafted nothing while sampling tested no speculation: inconclusive."""
    result = run_check(_config(), SampledCheckSettings(samples=300, tokens=2,
                                                       control_temperature=2.0, seed=SEED),
                       engine_factory=StandInEngine)
    outcome, lines = _outcome(result.verdict, {"method": "ngram"}, SpecStats())
    assert outcome == "inconclusive"
    assert "no token was drafted, so speculation was not tested" in lines[-1]


def test_the_command_prints_the_verdict_and_exits_by_outcome(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 0 on a pass, 1 on a difference, 3 when inconclusive; 2 for impossible settings."""
    common = ["lossless", "--strategy", "ngram", "--set", "strategy.num_speculative_tokens=3",
              "--set", "engine.backend=stand-in", "--limit", "4", "--tokens", "2",
              "--seed", str(SEED)]
    code = cli.main([*common, "--samples", "300", "--control-temperature", "2",
                     "--output", str(tmp_path / "pass")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "positive control, baseline at T=2 vs baseline at T=0.8: difference detected" in out
    assert f"pass: wrote {tmp_path / 'pass' / RESULT_FILE}" in out
    StandInEngine.flatten_by_tokens = {3: 1.6}
    assert cli.main([*common, "--samples", "300", "--control-temperature", "2",
                     "--output", str(tmp_path / "lossy")]) == cli.EXIT_FAILED
    StandInEngine.flatten_by_tokens = {}
    assert cli.main([*common, "--samples", "20", "--output", str(tmp_path / "weak")]
                    ) == cli.EXIT_INCONCLUSIVE
    assert "its pass means little" in capsys.readouterr().out
    assert cli.main([*common, "--temperature", "0.5", "--control-temperature", "0.5"]
                    ) == cli.EXIT_USAGE
    assert "the control temperature (0.5) equals the temperature checked" in (
        capsys.readouterr().err)
    assert cli.main([*common, "--temperature", "0"]) == cli.EXIT_USAGE
    assert "temperature must be > 0" in capsys.readouterr().err


def test_the_config_s_sampling_is_the_default(tmp_path: Path) -> None:
    """Without --temperature, a sampled config's own temperature and top-p are checked."""
    config = load_config(None, ["generation.temperature=0.6", "generation.top_p=0.9"])
    flags = cli.SamplingCheckFlags()
    settings = flags.settings(config)
    assert (settings.temperature, settings.top_p, settings.control) == (0.6, 0.9, 0.7)
    assert cli.SamplingCheckFlags().settings(load_config(None, [])).temperature == 0.8
