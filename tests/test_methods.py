"""The table of first vLLM versions per speculative method, and the refusals built from it."""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

import attrs
import pytest

from specdec import registry
from specdec.errors import StrategyError
from specdec.interfaces import Capabilities, TargetInfo
from specdec.records import StrategyConfig
from specdec.serialization import structure
from specdec.strategies.methods import (
    BASELINE,
    FIELD_FIRST_VERSION,
    FIRST_VERSION,
    METHOD_FIRST_VERSION,
    NEXT,
    SYNTHETIC_FIELDS,
    field_missing,
    method_missing,
    release,
)

NO_VLLM = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                             reason="vLLM is not installed")


def _installed() -> tuple[str, frozenset[str], frozenset[str]]:
    """The installed vLLM's version, methods and config fields, read as the offline engine does."""
    import vllm
    from vllm.config.speculative import (
        SpeculativeConfig,
        SpeculativeMethod,
    )

    from specdec.engines.vllm_offline import _literal_values

    fields = frozenset(f.name for f in dataclasses.fields(SpeculativeConfig) if f.init)
    return str(vllm.__version__), frozenset(_literal_values(SpeculativeMethod)), fields


def _cpu_build() -> Capabilities:
    """A stand-in for the CPU build's engine: 0.32.0 and the methods the table gives it."""
    methods = frozenset(m for m, v in METHOD_FIRST_VERSION.items() if v == BASELINE)
    fields = frozenset({"method", "model", "num_speculative_tokens", *SYNTHETIC_FIELDS})
    return Capabilities("offline", vllm_version="0.32.0", speculative_methods=methods,
                        speculative_config_fields=fields)


@NO_VLLM
def test_the_table_covers_the_installed_vllm() -> None:
    """Every method and synthetic field the installed vLLM accepts is in the table, no later."""
    version, methods, fields = _installed()
    if release(version) != release(BASELINE):
        pytest.skip(f"the table's baseline is vLLM {BASELINE}, vLLM {version} is installed")
    assert methods - METHOD_FIRST_VERSION.keys() == set()
    assert {m for m in methods if METHOD_FIRST_VERSION[m] != BASELINE} == set()
    # What the table says arrives later must indeed be missing here.
    assert {m for m, v in METHOD_FIRST_VERSION.items() if v != BASELINE} & methods == set()
    assert {f for f, v in FIELD_FIRST_VERSION.items() if v == BASELINE} <= fields
    assert {f for f, v in FIELD_FIRST_VERSION.items() if v != BASELINE} & fields == set()


def test_the_tables_do_not_overlap() -> None:
    """No name is both a method and a field, so the merged table loses nothing."""
    assert len(FIRST_VERSION) == len(METHOD_FIRST_VERSION) + len(FIELD_FIRST_VERSION)


def test_a_later_method_is_refused_with_the_version_that_brings_it() -> None:
    """step5_mtp on 0.32 names itself, the engine's version, 0.33.0 and the cuda extra."""
    msg = method_missing("step5_mtp", _cpu_build())
    assert msg is not None
    assert "'step5_mtp'" in msg
    assert "vLLM 0.32.0" in msg
    assert f"arrived in vLLM {NEXT}" in msg
    assert NEXT.startswith("0.33.")
    assert "pip install 'specdec[cuda]'" in msg
    assert "GPU machine" in msg


def test_methods_the_cpu_build_has_pass() -> None:
    """dflash, dspark, ngram_gpu and the synthetic sampler's fields are already in 0.32."""
    caps = _cpu_build()
    for method in ("dflash", "dspark", "ngram_gpu", "ngram"):
        assert method_missing(method, caps) is None
    for name in SYNTHETIC_FIELDS:
        assert field_missing(name, caps) is None


def test_an_engine_that_cannot_tell_refuses_nothing() -> None:
    """A server that lists no methods or fields is not refused anything here."""
    caps = Capabilities("server", vllm_version="0.32.0", local=False)
    assert method_missing("step5_mtp", caps) is None
    assert field_missing("fly_window_size", caps) is None


def test_a_later_field_is_refused_with_its_version() -> None:
    """A 0.33-only config field names 0.33.0; an unknown one lists the fields instead."""
    msg = field_missing("fly_window_size", _cpu_build())
    assert msg is not None
    assert f"speculative_config field 'fly_window_size': it arrived in vLLM {NEXT}" in msg
    msg = field_missing("no_such_field", _cpu_build())
    assert msg is not None
    assert "Fields it offers: method, model" in msg


def test_a_removed_method_says_which_release_dropped_it() -> None:
    """medusa is gone from 0.33: a 0.33 engine's refusal says so and points to 0.32."""
    caps = Capabilities("offline", vllm_version="0.33.0",
                        speculative_methods=frozenset({"ngram", "step5_mtp"}))
    msg = method_missing("medusa", caps)
    assert msg is not None
    assert f"vLLM {NEXT} removed it; use vLLM {BASELINE}" in msg


def test_an_older_engine_is_told_to_upgrade() -> None:
    """A method 0.32 has, missing from an older engine, asks for an upgrade, not a GPU."""
    caps = Capabilities("offline", vllm_version="0.20.1",
                        speculative_methods=frozenset({"ngram"}))
    msg = method_missing("dflash", caps)
    assert msg is not None
    assert f"vLLM {BASELINE} has it" in msg
    assert "upgrade vLLM" in msg


def _raw(**options: Any) -> tuple[Any, Any]:
    strategy = registry.strategies.create("raw")
    config = StrategyConfig(name="raw", options=options)
    return strategy, structure(dict(config.options), strategy.options_type)


def test_raw_refuses_a_later_method_with_the_new_message() -> None:
    """raw with method: step5_mtp on a 0.32 engine fails naming 0.33.0, not just 'unknown'."""
    target = TargetInfo.for_engine("t", None, {}, _cpu_build())
    strategy, options = _raw(method="step5_mtp", num_speculative_tokens=2)
    with pytest.raises(StrategyError, match=r"'step5_mtp': it arrived in vLLM 0\.33\.0") as err:
        strategy.check(options, target)
    assert "Methods it offers" not in str(err.value)
    strategy, options = _raw(method="dflash", num_speculative_tokens=2)
    strategy.check(options, target)


def test_raw_refuses_a_later_field_with_the_new_message() -> None:
    """raw with a 0.33-only key on a 0.32 engine names 0.33.0 instead of guessing a typo."""
    target = TargetInfo.for_engine("t", None, {}, _cpu_build())
    strategy, options = _raw(method="ngram", fly_window_size=4)
    with pytest.raises(StrategyError, match=r"'fly_window_size': it arrived in vLLM 0\.33\.0"):
        strategy.check(options, target)


def test_raw_refuses_the_synthetic_sampler_on_a_cpu_engine_only() -> None:
    """vLLM's CPU kernels assert against synthetic acceptance; a GPU engine may take it."""
    options_in = {"method": "ngram", "num_speculative_tokens": 4,
                  "rejection_sample_method": "synthetic", "synthetic_acceptance_length": 3.0}
    strategy, options = _raw(**options_in)
    cpu = attrs.evolve(_cpu_build(), device="cpu")
    with pytest.raises(StrategyError, match=r"'synthetic' does not run on vLLM's CPU build"):
        strategy.check(options, TargetInfo.for_engine("t", None, {}, cpu))
    gpu = attrs.evolve(cpu, device="cuda")
    strategy.check(options, TargetInfo.for_engine("t", None, {}, gpu))
    strategy, options = _raw(**{**options_in, "rejection_sample_method": "standard"})
    strategy.check(options, TargetInfo.for_engine("t", None, {}, cpu))
