"""The ``rejection_sampler`` section: typed, checked before the engine starts, and put into the
strategy's ``speculative_config`` as vLLM names its fields (no engine: fake capabilities, and
the command line refusing what the CPU build cannot run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from specdec.config import config_from_mapping, load_config
from specdec.errors import ConfigError, StrategyError
from specdec.interfaces import Capabilities, TargetInfo
from specdec.records import EngineConfig, RejectionSamplerConfig
from specdec.rejection_sampler import apply, fields
from specdec.strategies.methods import FIELD_FIRST_VERSION

from .conftest import run_cli

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2,
         "prompt_lookup_max": 4}
ALL_FIELDS = frozenset({*NGRAM, *(f for f, v in FIELD_FIRST_VERSION.items() if v == "0.32.0")})


def _target(device: str = "cuda", version: str = "0.32.0",
            known: frozenset[str] = ALL_FIELDS) -> TargetInfo:
    caps = Capabilities("offline", vllm_version=version, speculative_methods=frozenset({"ngram"}),
                        speculative_config_fields=known, device=device)
    return TargetInfo.for_engine("target", None, {}, caps)


def _sampler(**section: Any) -> RejectionSamplerConfig:
    sampler = config_from_mapping({"rejection_sampler": section}, "test").rejection_sampler
    assert sampler is not None
    return sampler


@pytest.mark.parametrize(("section", "expected"), [
    ({"method": "synthetic"}, ("method synthetic takes exactly one of acceptance_rates and "
                               "acceptance_length, got neither @ $.rejection_sampler.method")),
    ({"method": "synthetic", "acceptance_length": 2, "acceptance_rates": [0.5, 0.2]},
     "got acceptance_rates and acceptance_length @ $.rejection_sampler.acceptance_length"),
    ({"method": "standard", "acceptance_length": 2},
     ("acceptance_length is for method synthetic (vLLM's synthetic rejection sampler), not "
      "standard @ $.rejection_sampler.acceptance_length")),
    ({"method": "synthetic", "acceptance_rates": [0.5, 0.7]},
     "must not increase from one position to the next"),
    ({"method": "synthetic", "acceptance_rates": [1.2]},
     "acceptance_rates must be numbers in [0, 1], one per draft position, got [1.2]"),
    ({"method": "synthetic", "acceptance_length": 0.5},
     "acceptance_length must be >= 1, got 0.5 @ $.rejection_sampler.acceptance_length"),
    ({"method": "synthetic", "acceptance_rates": "0.5"}, "expected a list of float values"),
    ({"method": "fast"}, ("must be one of 'standard', 'synthetic', 'block', 'fly', got the "
                          "string 'fast' @ $.rejection_sampler.method")),
    ({"method": "synthetic", "acceptance_lenght": 2}, "acceptance_lenght"),
])
def test_a_bad_section_is_refused_where_it_is(tmp_path: Path, section: dict[str, Any],
                                             expected: str) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({"strategy": {"name": "ngram"},
                                    "rejection_sampler": section}), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert expected in str(caught.value)


def test_the_fields_go_into_the_strategy_s_speculative_config() -> None:
    sampler = _sampler(method="synthetic", acceptance_length=2.5)
    merged = apply(sampler, NGRAM, _target(), EngineConfig())
    assert merged == {**NGRAM, "rejection_sample_method": "synthetic",
                      "synthetic_acceptance_length": 2.5}
    rates = _sampler(method="synthetic", acceptance_rates=[0.9, 0.5, 0.5])
    assert fields(rates) == {"rejection_sample_method": "synthetic",
                             "synthetic_acceptance_rates": [0.9, 0.5, 0.5]}
    assert apply(_sampler(method="block"), NGRAM, _target("cpu"), EngineConfig()) == {
        **NGRAM, "rejection_sample_method": "block"}
    assert apply(None, NGRAM, _target(), EngineConfig()) == NGRAM
    assert apply(None, None, _target(), EngineConfig()) is None


@pytest.mark.parametrize(("sampler", "spec", "target", "engine", "expected"), [
    (_sampler(method="block"), None, _target(), EngineConfig(), "the strategy drafts nothing"),
    (_sampler(method="synthetic", acceptance_rates=[0.9, 0.5]), NGRAM, _target(), EngineConfig(),
     "gives 2 rates but the strategy drafts 3 tokens (num_speculative_tokens)"),
    (_sampler(method="synthetic", acceptance_length=4.5), NGRAM, _target(), EngineConfig(),
     "acceptance_length 4.5 is more than 4, the most a verify step of 3 drafts can give"),
    (_sampler(method="synthetic", acceptance_length=2), NGRAM, _target("cpu"), EngineConfig(),
     "rejection_sample_method 'synthetic' does not run on vLLM's CPU build"),
    (_sampler(method="fly"), NGRAM, _target(), EngineConfig(),
     "has no rejection_sample_method 'fly': it arrived in vLLM 0.33.0"),
    (_sampler(method="synthetic", acceptance_length=2), NGRAM,
     _target(known=ALL_FIELDS - {"synthetic_acceptance_length"}), EngineConfig(),
     "has no speculative_config field 'synthetic_acceptance_length'"),
    (_sampler(method="block"), {**NGRAM, "rejection_sample_method": "standard"}, _target(),
     EngineConfig(), "set rejection_sample_method and rejection_sampler sets it too"),
    (_sampler(method="block"), NGRAM, _target(),
     EngineConfig(backend="server", url="http://gpu-box:8000"),
     "a server you started verifies as its own --speculative-config says"),
])
def test_what_vllm_would_refuse_is_refused_first(
        sampler: RejectionSamplerConfig, spec: dict[str, Any] | None, target: TargetInfo,
        engine: EngineConfig, expected: str) -> None:
    with pytest.raises(StrategyError) as caught:
        apply(sampler, spec, target, engine)
    assert expected in str(caught.value)


def test_synthetic_acceptance_is_known_from_either_place() -> None:
    section = config_from_mapping({"strategy": {"name": "ngram"}, "rejection_sampler": {
        "method": "synthetic", "acceptance_length": 2}}, "test")
    raw = config_from_mapping({"strategy": {"name": "raw", "method": "ngram",
                                            "rejection_sample_method": "synthetic"}}, "test")
    plain = config_from_mapping({"strategy": {"name": "ngram"},
                                 "rejection_sampler": {"method": "block"}}, "test")
    assert (section.synthetic_acceptance, raw.synthetic_acceptance,
            plain.synthetic_acceptance) == (True, True, False)


def test_the_cpu_build_s_refusal_comes_before_the_engine() -> None:
    """On this machine's CPU engine the synthetic sampler kills vLLM at its first verify step;
    specdec-run refuses it at once, having asked the installed vLLM for its fields."""
    result = run_cli("specdec-run", "--strategy", "ngram", "--limit", "1",
                     "--set", "rejection_sampler.method=synthetic",
                     "--set", "rejection_sampler.acceptance_length=2", timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    assert ("specdec: error: rejection_sample_method 'synthetic' does not run on vLLM's CPU "
            "build") in result.stderr
