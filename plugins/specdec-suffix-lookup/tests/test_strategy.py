"""The suffix_lookup strategy: options, pre-flight check and the config it gives vLLM."""

from __future__ import annotations

from pathlib import Path

import pytest
from specdec import registry
from specdec.errors import ConfigError, InvalidOptionError, StrategyError
from specdec.interfaces import TargetInfo
from specdec.registry import STRATEGY, Registry
from specdec.serialization import problems, structure

from specdec_suffix_lookup.strategy import SuffixLookupOptions, SuffixLookupStrategy


def _target(*methods: str, version: str | None = "0.32.0") -> TargetInfo:
    return TargetInfo(model="m", path=Path("m"), vllm_version=version,
                      speculative_methods=frozenset(methods))


def test_defaults_point_vllm_at_the_plain_class() -> None:
    """Default options give the class path with no settings in its name."""
    config = SuffixLookupStrategy().speculative_config(SuffixLookupOptions(), _target())
    assert config == {
        "method": "custom_class",
        "model": "specdec_suffix_lookup.proposer.LongestSpanProposer",
        "num_speculative_tokens": 4,
    }


def test_settings_travel_in_the_class_name() -> None:
    """min_match and max_lookback become part of the class path."""
    options = SuffixLookupOptions(num_speculative_tokens=3, min_match=4, max_lookback=512)
    config = SuffixLookupStrategy().speculative_config(options, _target())
    assert config["model"] == "specdec_suffix_lookup.proposer.LongestSpanProposer_min4_lookback512"
    assert config["num_speculative_tokens"] == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_speculative_tokens": 0}, "num_speculative_tokens must be at least 1, got 0"),
        ({"min_match": 0}, "min_match must be at least 1, got 0"),
        ({"min_match": 4, "max_lookback": 4}, "max_lookback (4) must be larger than min_match"),
    ],
)
def test_invalid_options_are_refused(options: dict[str, int], message: str) -> None:
    """Validators raise InvalidOptionError with a sentence for the user."""
    with pytest.raises(InvalidOptionError) as caught:
        SuffixLookupOptions(**options)
    assert message in str(caught.value)


def test_options_structure_strictly_from_config_files() -> None:
    """specdec's converter refuses a misspelt option, naming its path."""
    assert structure({"min_match": 3}, SuffixLookupOptions) == SuffixLookupOptions(min_match=3)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - cattrs raises a group
        structure({"min_mach": 3}, SuffixLookupOptions)
    error = ConfigError("strategy 'suffix_lookup'", problems(caught.value, "$.strategy"))
    assert "min_mach" in str(error)


def test_check_requires_custom_class() -> None:
    """A vLLM without custom_class is refused before the engine starts, saying what to do."""
    strategy = SuffixLookupStrategy()
    strategy.check(SuffixLookupOptions(), _target("ngram", "custom_class"))
    strategy.check(SuffixLookupOptions(), _target(version=None))
    with pytest.raises(StrategyError) as caught:
        strategy.check(SuffixLookupOptions(), _target("ngram", version="0.10.0"))
    message = str(caught.value)
    assert "'custom_class'" in message
    assert "0.10.0" in message
    assert "Upgrade vLLM" in message


def test_registry_accepts_it() -> None:
    """The registry's interface and API-version checks pass."""
    strategies = Registry(STRATEGY, source=lambda _group: [])
    strategies.add("suffix_lookup", SuffixLookupStrategy)
    instance = strategies.create("suffix_lookup")
    assert isinstance(instance, SuffixLookupStrategy)
    assert instance.plugin_api_version == registry.PLUGIN_API_VERSION
