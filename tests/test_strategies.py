"""Built-in strategies: their speculative_config and pre-flight checks, without an engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
from safetensors.torch import save_file
from structlog.testing import capture_logs

from specdec import registry
from specdec.errors import ConfigError, StrategyError
from specdec.interfaces import Capabilities, TargetInfo
from specdec.records import StrategyConfig
from specdec.serialization import problems, structure

METHODS = frozenset({"ngram", "draft_model", "eagle", "eagle3", "mtp", "suffix",
                     "custom_class"})
FIELDS = frozenset({"method", "model", "num_speculative_tokens", "prompt_lookup_min",
                    "prompt_lookup_max", "draft_tensor_parallel_size"})
HIDDEN = 8


def _target(tmp_path: Path, **config: Any) -> TargetInfo:
    settings = {"vocab_size": 100, "hidden_size": HIDDEN, **config}
    folder = tmp_path / "target"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_bytes(orjson.dumps(settings))
    return TargetInfo(model="target", path=folder, config=settings, vllm_version="0.32.0",
                      speculative_methods=METHODS, speculative_config_fields=FIELDS)


def _options(name: str, **options: Any) -> tuple[Any, Any]:
    strategy = registry.strategies.create(name)
    config = StrategyConfig(name=name, options=options)
    try:
        return strategy, structure(dict(config.options), strategy.options_type)
    except Exception as exc:
        raise ConfigError(name, problems(exc, "$.strategy")) from exc


def test_none_is_the_baseline(tmp_path: Path) -> None:
    """The baseline gives vLLM no speculative_config."""
    strategy, options = _options("none")
    assert strategy.speculative_config(options, _target(tmp_path)) is None


def test_ngram_writes_vllm_defaults_out(tmp_path: Path) -> None:
    """Unset lookup bounds take vLLM's own defaults, written out."""
    strategy, options = _options("ngram")
    assert strategy.speculative_config(options, _target(tmp_path)) == {
        "method": "ngram", "num_speculative_tokens": 4,
        "prompt_lookup_min": 5, "prompt_lookup_max": 5,
    }


def test_ngram_window_checked() -> None:
    """prompt_lookup_min above prompt_lookup_max is refused with both values."""
    with pytest.raises(ConfigError) as info:
        _options("ngram", prompt_lookup_min=4, prompt_lookup_max=2)
    assert info.value.problems == [
        "prompt_lookup_min (4) must be <= prompt_lookup_max (2) @ $.strategy"
    ]


def test_zero_tokens_refused() -> None:
    """num_speculative_tokens must be positive."""
    with pytest.raises(ConfigError, match="num_speculative_tokens must be >= 1, got 0"):
        _options("ngram", num_speculative_tokens=0)


def _draft(tmp_path: Path, name: str, vocab_size: int) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_bytes(orjson.dumps({"vocab_size": vocab_size}))
    return folder


def test_draft_model_config(tmp_path: Path) -> None:
    """A draft folder becomes a draft_model speculative_config with its options."""
    draft = _draft(tmp_path, "draft", 100)
    strategy, options = _options("draft_model", model=str(draft), num_speculative_tokens=2,
                                 draft_tensor_parallel_size=1)
    target = _target(tmp_path)
    strategy.check(options, target)
    assert strategy.speculative_config(options, target) == {
        "method": "draft_model", "model": str(draft.resolve()), "num_speculative_tokens": 2,
        "draft_tensor_parallel_size": 1,
    }


def test_draft_with_other_vocabulary_refused(tmp_path: Path) -> None:
    """A draft whose vocabulary differs from the target's fails before the engine starts."""
    draft = _draft(tmp_path, "draft", 32000)
    strategy, options = _options("draft_model", model=str(draft))
    with pytest.raises(StrategyError, match="vocabulary of 32000 tokens but the target"):
        strategy.check(options, _target(tmp_path))


def test_draft_with_other_tokenizer_refused(tmp_path: Path) -> None:
    """Same vocabulary size but different token ids is also refused."""
    target = _target(tmp_path)
    assert target.path is not None
    draft = _draft(tmp_path, "draft", 100)
    (target.path / "tokenizer.json").write_bytes(orjson.dumps({"model": {"vocab": {"a": 0}}}))
    (draft / "tokenizer.json").write_bytes(orjson.dumps({"model": {"vocab": {"a": 1}}}))
    strategy, options = _options("draft_model", model=str(draft))
    with pytest.raises(StrategyError, match="different tokenizer"):
        strategy.check(options, target)


def _head(tmp_path: Path, tensors: dict[str, list[int]]) -> Path:
    folder = tmp_path / "head"
    folder.mkdir()
    (folder / "config.json").write_bytes(orjson.dumps({"hidden_size": HIDDEN}))
    save_file({k: torch.zeros(shape) for k, shape in tensors.items()},
              str(folder / "model.safetensors"))
    return folder


def test_eagle_head_that_fits(tmp_path: Path) -> None:
    """A head with fc [H, 2H] and no layer-0 input norm passes."""
    head = _head(tmp_path, {"fc.weight": [HIDDEN, 2 * HIDDEN],
                            "layers.0.post_attention_layernorm.weight": [HIDDEN]})
    strategy, options = _options("eagle", model=str(head))
    strategy.check(options, _target(tmp_path))
    assert strategy.speculative_config(options, _target(tmp_path))["method"] == "eagle"


def test_eagle_head_with_input_norm_refused(tmp_path: Path) -> None:
    """vLLM refuses layers.0.input_layernorm; specdec says so first."""
    head = _head(tmp_path, {"fc.weight": [HIDDEN, 2 * HIDDEN],
                            "model.layers.0.input_layernorm.weight": [HIDDEN]})
    strategy, options = _options("eagle", model=str(head))
    with pytest.raises(StrategyError, match="input_layernorm"):
        strategy.check(options, _target(tmp_path))


def test_eagle_head_for_another_model_refused(tmp_path: Path) -> None:
    """An fc sized for another hidden size does not fit the target."""
    head = _head(tmp_path, {"fc.weight": [16, 32]})
    strategy, options = _options("eagle", model=str(head))
    with pytest.raises(StrategyError, match="does not fit the target"):
        strategy.check(options, _target(tmp_path))


def test_eagle3_expects_three_layers(tmp_path: Path) -> None:
    """An EAGLE-1 head given as eagle3 is refused: fc must take 3 x hidden."""
    head = _head(tmp_path, {"fc.weight": [HIDDEN, 2 * HIDDEN]})
    strategy, options = _options("eagle3", model=str(head))
    with pytest.raises(StrategyError, match=f"needs 3 x {HIDDEN}"):
        strategy.check(options, _target(tmp_path))


def test_eagle_head_defaults_to_the_bundled_alias() -> None:
    """eagle and eagle3 default to the bundled model's trained heads of their kind."""
    _, options = _options("eagle")
    assert options.model == "smollm2-135m-eagle"
    _, options = _options("eagle3")
    assert options.model == "smollm2-135m-eagle3"


def test_method_missing_from_vllm(tmp_path: Path) -> None:
    """A method the installed vLLM lacks names the version and what it offers."""
    target = TargetInfo(model="t", path=None, vllm_version="0.9.0",
                        speculative_methods=frozenset({"ngram"}))
    strategy, options = _options("suffix")
    with pytest.raises(StrategyError, match=r"vLLM 0\.9\.0 has no speculative method 'suffix'"):
        strategy.check(options, target)


def test_suffix_needs_arctic_inference(tmp_path: Path) -> None:
    """vLLM 0.32 offers suffix, but it needs arctic-inference installed."""
    strategy, options = _options("suffix")
    with pytest.raises(StrategyError, match="arctic-inference"):
        strategy.check(options, _target(tmp_path))


def test_mtp_needs_mtp_layers(tmp_path: Path) -> None:
    """A target without MTP layers is refused; one with them passes."""
    strategy, options = _options("mtp")
    with pytest.raises(StrategyError, match="declares no MTP layers"):
        strategy.check(options, _target(tmp_path))
    strategy.check(options, _target(tmp_path, num_nextn_predict_layers=1))


def test_raw_passes_through_and_catches_typos(tmp_path: Path) -> None:
    """raw sends keys unchanged, but a misspelt key fails with a suggestion."""
    strategy, options = _options("raw", method="ngram", num_speculative_tokens=2)
    target = _target(tmp_path)
    strategy.check(options, target)
    assert strategy.speculative_config(options, target) == {
        "method": "ngram", "num_speculative_tokens": 2,
    }
    strategy, options = _options("raw", method="ngram", num_speculative_token=2)
    with pytest.raises(StrategyError, match="did you mean 'num_speculative_tokens'"):
        strategy.check(options, target)
    strategy, options = _options("raw", method="lookahead")
    with pytest.raises(StrategyError, match="no speculative method 'lookahead'"):
        strategy.check(options, target)


def _server_target() -> TargetInfo:
    """What a server engine reports: its version, nothing about methods or fields."""
    caps = Capabilities("server", vllm_version="0.32.0", local=False, source="the server")
    return TargetInfo.for_engine("t", None, {}, caps)


def test_unknown_methods_skip_the_method_check_and_say_so() -> None:
    """A method the engine cannot confirm is not refused; a log line says it was not checked."""
    target = _server_target()
    assert target.vllm_version is None
    assert target.engine is not None
    assert target.engine.vllm_version == "0.32.0"
    strategy, options = _options("ngram")
    with capture_logs() as logs:
        strategy.check(options, target)
    assert [(e["event"], e["method"], e["backend"]) for e in logs] == [
        ("the engine cannot tell its speculative methods; skipping the method check",
         "ngram", "server"),
    ]


def test_raw_leaves_keys_to_an_engine_that_cannot_list_them() -> None:
    """Against a server, raw's keys are not checked here (vLLM there checks them), and said so."""
    strategy, options = _options("raw", method="ngram", num_speculative_token=2)
    with capture_logs() as logs:
        strategy.check(options, _server_target())
    assert "the engine cannot tell its speculative_config fields" in logs[0]["event"]
    assert logs[0]["keys"] == ["method", "num_speculative_token"]


def test_suffix_does_not_look_for_arctic_inference_here_for_a_remote_engine() -> None:
    """A server's packages are not this environment's: the local check is skipped."""
    strategy, options = _options("suffix")
    with capture_logs() as logs:
        strategy.check(options, _server_target())
    assert logs[-1]["event"] == (
        "the engine runs elsewhere; not checking that it has arctic-inference"
    )


def test_known_capabilities_reach_the_checks(tmp_path: Path) -> None:
    """An engine that lists its methods has them checked, with its version in the message."""
    caps = Capabilities("offline", vllm_version="0.33.0", speculative_methods=frozenset({"eagle"}),
                        speculative_config_fields=FIELDS)
    target = TargetInfo.for_engine("t", None, {}, caps)
    strategy, options = _options("ngram")
    with pytest.raises(StrategyError, match=r"vLLM 0\.33\.0 has no speculative method 'ngram'"):
        strategy.check(options, target)
