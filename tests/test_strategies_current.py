"""The typed strategies of vLLM's current methods: dflash, dspark and ngram_gpu, without an engine.

Options go through the path a user's file takes (``load_config``, then
``registry.strategy_options``); the pre-flight checks run against fake engine
capabilities, as an offline engine (which lists its methods, fields and device)
or a server (which lists none) would report them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from specdec import registry
from specdec.config import load_config
from specdec.errors import ConfigError, ModelError, ReplayError, StrategyError
from specdec.interfaces import Capabilities, TargetInfo
from specdec.records import StrategyConfig
from specdec.replay import proposer_for
from specdec.strategies.methods import BASELINE, METHOD_FIRST_VERSION
from specdec.tune import prediction_kind

ROOT = Path(__file__).resolve().parents[1]
HUB_HEAD = "z-lab/Qwen3-8B-DFlash-b16"
FIELDS = frozenset({
    "method", "model", "num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max",
    "draft_tensor_parallel_size", "attention_backend", "dspark_draft_topk",
    "enable_adaptive_verification", "rejection_sample_method",
})
"""The speculative_config fields of vLLM 0.32.0 the tests need (all are in it)."""
TARGET = {"model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 8, "vocab_size": 100}
"""A small target's config.json."""


def _engine(device: str | None = "cuda", version: str = "0.32.0",
            fields: frozenset[str] = FIELDS) -> Capabilities:
    methods = frozenset(m for m, v in METHOD_FIRST_VERSION.items() if v == BASELINE)
    return Capabilities("offline", vllm_version=version, speculative_methods=methods,
                        speculative_config_fields=fields, device=device)


def _target(device: str | None = "cuda", **config: Any) -> TargetInfo:
    return TargetInfo.for_engine("target", None, {**TARGET, **config}, _engine(device))


def _load(tmp_path: Path, strategy: dict[str, Any]) -> tuple[Any, Any]:
    """The strategy and its options, read from an experiment file as ``specdec-run`` reads it."""
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({"model": "smollm2-135m", "strategy": strategy}),
                    encoding="utf-8")
    config = load_config(path)
    return registry.strategy_options(config.strategy.name, config.strategy.options)


def _head(tmp_path: Path, name: str = "head", **config: Any) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_bytes(orjson.dumps(config))
    return folder


def _dflash_head(tmp_path: Path, **config: Any) -> Path:
    """A head folder whose config.json is shaped as z-lab's (DFlashDraftModel, dflash_config)."""
    settings = {"architectures": ["DFlashDraftModel"], "hidden_size": 64, "block_size": 16,
                "dflash_config": {"target_layer_ids": [1, 4, 7], "mask_token_id": 99}, **config}
    return _head(tmp_path, **settings)


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ({"name": "dflash"}, "required field missing @ $.strategy.model"),
        ({"name": "dflash", "model": 3}, "expected a string, got 3"),
        ({"name": "dflash", "model": HUB_HEAD, "num_speculative_tokens": 0},
         "num_speculative_tokens must be >= 1, got 0 @ $.strategy.num_speculative_tokens"),
        ({"name": "dflash", "model": HUB_HEAD, "num_speculative_token": 15},
         "did you mean 'num_speculative_tokens'? @ $.strategy"),
        ({"name": "dflash", "model": HUB_HEAD, "draft_tensor_parallel_size": 0},
         "draft_tensor_parallel_size must be >= 1, got 0"),
        ({"name": "dspark", "dspark_draft_topk": 0},
         "dspark_draft_topk must be >= 1, got 0 @ $.strategy.dspark_draft_topk"),
        ({"name": "dspark", "dspark_draft_topk": "ten"},
         "expected an integer, got the string 'ten' @ $.strategy.dspark_draft_topk"),
        ({"name": "dspark", "enable_adaptive_verification": "maybe"},
         "expected true or false, got the string 'maybe'"),
        ({"name": "dspark", "block_size": 7}, "extra fields found (block_size)"),
        ({"name": "ngram_gpu", "prompt_lookup_min": 4, "prompt_lookup_max": 2},
         "prompt_lookup_min (4) must be <= prompt_lookup_max (2) @ $.strategy"),
        ({"name": "ngram_gpu", "num_speculative_tokens": -1},
         "num_speculative_tokens must be >= 1, got -1"),
        ({"name": "ngram_gpu", "prompt_lookup_max": 2.5}, "@ $.strategy.prompt_lookup_max"),
    ],
    ids=["dflash-no-head", "dflash-head-not-text", "dflash-zero-k", "dflash-misspelt",
         "dflash-zero-tp", "dspark-zero-topk", "dspark-topk-text", "dspark-flag-text",
         "dspark-unknown-option", "ngram_gpu-window", "ngram_gpu-negative-k",
         "ngram_gpu-fraction"],
)
def test_bad_options_are_refused_where_they_are(tmp_path: Path, strategy: dict[str, Any],
                                               expected: str) -> None:
    """A wrong type or value fails as the file is read, located at its option."""
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, strategy)
    assert any(expected in problem for problem in info.value.problems), info.value.problems


def test_ngram_gpu_writes_vllm_defaults_out(tmp_path: Path) -> None:
    """Unset lookup bounds take vLLM's defaults (5 and 5), written out, as ngram's do."""
    strategy, options = _load(tmp_path, {"name": "ngram_gpu"})
    assert strategy.speculative_config(options, _target()) == {
        "method": "ngram_gpu", "num_speculative_tokens": 4,
        "prompt_lookup_min": 5, "prompt_lookup_max": 5,
    }
    strategy, options = _load(tmp_path, {"name": "ngram_gpu", "num_speculative_tokens": 3,
                                         "prompt_lookup_min": 2, "prompt_lookup_max": 4})
    assert strategy.speculative_config(options, _target()) == {
        "method": "ngram_gpu", "num_speculative_tokens": 3,
        "prompt_lookup_min": 2, "prompt_lookup_max": 4,
    }


def test_the_shipped_dflash_config_sends_what_raw_sent() -> None:
    """configs/qwen3-8b/dflash.yaml gives vLLM the dict its raw strategy used to pass through."""
    config = load_config(ROOT / "configs" / "qwen3-8b" / "dflash.yaml")
    assert config.strategy.name == "dflash"
    strategy, options = registry.strategy_options(config.strategy.name, config.strategy.options)
    assert strategy.speculative_config(options, _target()) == {
        "method": "dflash", "model": HUB_HEAD, "num_speculative_tokens": 15,
    }


def test_dflash_sends_only_what_is_set(tmp_path: Path) -> None:
    """A head folder is sent resolved; unset options are left out, for vLLM to default."""
    head = _dflash_head(tmp_path)
    strategy, options = _load(tmp_path, {"name": "dflash", "model": str(head)})
    assert strategy.speculative_config(options, _target()) == {
        "method": "dflash", "model": str(head.resolve()),
    }
    strategy, options = _load(tmp_path, {"name": "dflash", "model": str(head),
                                         "num_speculative_tokens": 7,
                                         "draft_tensor_parallel_size": 1,
                                         "attention_backend": "FLASH_ATTN"})
    assert strategy.speculative_config(options, _target()) == {
        "method": "dflash", "model": str(head.resolve()), "num_speculative_tokens": 7,
        "draft_tensor_parallel_size": 1, "attention_backend": "FLASH_ATTN",
    }


def test_dspark_sends_only_what_is_set(tmp_path: Path) -> None:
    """Without a draft no model key is sent (vLLM uses the target's stages); flags when set."""
    strategy, options = _load(tmp_path, {"name": "dspark", "num_speculative_tokens": 3})
    assert strategy.speculative_config(options, _target()) == {
        "method": "dspark", "num_speculative_tokens": 3,
    }
    draft = _head(tmp_path, architectures=["Qwen3DSparkModel"], block_size=7)
    strategy, options = _load(tmp_path, {"name": "dspark", "model": str(draft),
                                         "dspark_draft_topk": 8,
                                         "enable_adaptive_verification": True})
    assert strategy.speculative_config(options, _target()) == {
        "method": "dspark", "model": str(draft.resolve()), "dspark_draft_topk": 8,
        "enable_adaptive_verification": True,
    }


OPTIONS: dict[str, dict[str, Any]] = {
    "dflash": {"name": "dflash", "model": HUB_HEAD, "num_speculative_tokens": 15},
    "dspark": {"name": "dspark", "num_speculative_tokens": 3},
    "ngram_gpu": {"name": "ngram_gpu"},
}


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_an_older_vllm_is_told_which_release_has_the_method(tmp_path: Path,
                                                            method: str) -> None:
    """An engine whose vLLM lacks the method: the message names it, the engine's vLLM and 0.32.0."""
    old = Capabilities("offline", vllm_version="0.20.1", speculative_methods=frozenset({"ngram"}),
                       speculative_config_fields=FIELDS, device="cuda")
    target = TargetInfo.for_engine("target", None, TARGET, old)
    strategy, options = _load(tmp_path, OPTIONS[method])
    with pytest.raises(StrategyError) as info:
        strategy.check(options, target)
    message = str(info.value)
    assert f"vLLM 0.20.1 has no speculative method {method!r}" in message
    assert f"vLLM {BASELINE} has it" in message
    assert "upgrade vLLM" in message


def test_a_field_the_engine_lacks_is_named(tmp_path: Path) -> None:
    """An option whose speculative_config field the engine's vLLM does not have fails by name."""
    lacking = _engine(fields=FIELDS - {"dspark_draft_topk"})
    target = TargetInfo.for_engine("target", None, {**TARGET, "model_type": "deepseek_v4"},
                                   lacking)
    strategy, options = _load(tmp_path, {"name": "dspark", "num_speculative_tokens": 3})
    strategy.check(options, target)
    strategy, options = _load(tmp_path, {"name": "dspark", "num_speculative_tokens": 3,
                                         "dspark_draft_topk": 4})
    with pytest.raises(StrategyError,
                       match="has no speculative_config field 'dspark_draft_topk'"):
        strategy.check(options, target)


@pytest.mark.parametrize("method", ["ngram_gpu", "dspark"])
def test_cpu_engine_refuses_what_the_cpu_build_cannot_run(tmp_path: Path, method: str) -> None:
    """ngram_gpu and dspark are refused on a CPU engine, and pass the same checks on a GPU one."""
    strategy, options = _load(tmp_path, OPTIONS[method])
    strategy.check(options, _target("cuda", model_type="deepseek_v4"))
    with pytest.raises(StrategyError, match=f"'{method}' does not run on vLLM's CPU build"):
        strategy.check(options, _target("cpu", model_type="deepseek_v4"))


def test_raw_refuses_ngram_gpu_on_a_cpu_engine_too(tmp_path: Path) -> None:
    """The refusal lives with the method, so the untyped route meets it as well."""
    strategy, options = _load(tmp_path, {"name": "raw", "method": "ngram_gpu",
                                         "num_speculative_tokens": 3})
    with pytest.raises(StrategyError, match="'ngram_gpu' does not run on vLLM's CPU build"):
        strategy.check(options, _target("cpu"))
    strategy.check(options, _target("cuda"))


def test_an_engine_that_cannot_tell_refuses_nothing(tmp_path: Path) -> None:
    """A server lists no methods, fields or device: nothing is refused here (vLLM there checks)."""
    server = Capabilities("server", vllm_version="0.32.0", local=False)
    target = TargetInfo.for_engine("target", None, {}, server)
    for options in OPTIONS.values():
        strategy, structured = _load(tmp_path, options)
        strategy.check(structured, target)


def test_a_dflash_head_that_fits_passes(tmp_path: Path) -> None:
    """A DFlash head reading existing layers at the target's hidden size passes, CPU included."""
    strategy, options = _load(tmp_path, {"name": "dflash", "model": str(_dflash_head(tmp_path)),
                                         "num_speculative_tokens": 15})
    strategy.check(options, _target("cuda"))
    strategy.check(options, _target("cpu"))


@pytest.mark.parametrize(
    ("head", "k", "expected"),
    [
        ({"architectures": ["LlamaForCausalLM"], "dflash_config": None}, 15,
         "is not a DFlash head: its config.json has no dflash_config"),
        ({"architectures": [], "dflash_config": {}}, 15, "lists no architectures"),
        ({"dflash_config": {"target_layer_ids": [1, 8]}}, 15,
         ("reads target layers [1, 8] (dflash_config.target_layer_ids), but the target target "
          "has 8 layers")),
        ({"hidden_size": 4096}, 15, "built for a target hidden size of 4096"),
        ({"hidden_size": 32, "target_hidden_size": 128}, 15,
         "built for a target hidden size of 128"),
        ({}, None, ("needs num_speculative_tokens: set strategy.num_speculative_tokens (the "
                    "head's block size is 16: 15 fills it)")),
    ],
    ids=["not-dflash", "no-architectures", "layers-outside", "hidden-size",
         "target-hidden-size", "no-k"],
)
def test_a_dflash_head_that_would_fail_late_is_refused(tmp_path: Path, head: dict[str, Any],
                                                      k: int | None, expected: str) -> None:
    """Each refusal stands for one vLLM gives only after loading or at the first forward pass."""
    folder = _dflash_head(tmp_path, **head)
    strategy, options = _load(tmp_path, {"name": "dflash", "model": str(folder),
                                         "num_speculative_tokens": k})
    with pytest.raises(StrategyError) as info:
        strategy.check(options, _target())
    assert expected in str(info.value)


def test_a_dflash_folder_without_config_is_refused(tmp_path: Path) -> None:
    """A head folder with no config.json fails at once, naming the folder."""
    folder = tmp_path / "empty"
    folder.mkdir()
    strategy, options = _load(tmp_path, {"name": "dflash", "model": str(folder)})
    with pytest.raises(ModelError, match=f"model folder {folder} has no config.json"):
        strategy.check(options, _target())


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        ({"architectures": ["DFlash2DraftModel"]}, "DFlash candidate-head drafts"),
        ({"layer_types": ["sliding_attention", "full_attention"]},
         "mixed sliding/full dflash drafts"),
    ],
    ids=["candidate-head", "mixed-attention"],
)
def test_a_v2_only_dflash_head_is_refused_on_cpu_only(tmp_path: Path, head: dict[str, Any],
                                                      expected: str) -> None:
    """Heads only Model Runner V2 runs are refused on the CPU build (V1 there), not on a GPU."""
    folder = _dflash_head(tmp_path, **head)
    strategy, options = _load(tmp_path, {"name": "dflash", "model": str(folder),
                                         "num_speculative_tokens": 15})
    strategy.check(options, _target("cuda"))
    with pytest.raises(StrategyError, match="Model Runner V1") as info:
        strategy.check(options, _target("cpu"))
    assert expected in str(info.value)


def test_dspark_without_a_draft_needs_a_deepseek_v4_target_and_k(tmp_path: Path) -> None:
    """The target's own DSpark stages: only DeepSeek-V4 has them, and vLLM needs k for them."""
    strategy, options = _load(tmp_path, {"name": "dspark", "num_speculative_tokens": 3})
    strategy.check(options, _target(model_type="deepseek_v41"))
    with pytest.raises(StrategyError, match="the target target is 'qwen3': name a DSpark draft"):
        strategy.check(options, _target())
    strategy, options = _load(tmp_path, {"name": "dspark"})
    with pytest.raises(StrategyError, match="dspark without a model needs num_speculative_tokens"):
        strategy.check(options, _target(model_type="deepseek_v4"))
    strategy, options = _load(tmp_path, {"name": "dspark", "num_speculative_tokens": 3,
                                         "dspark_draft_topk": 4})
    with pytest.raises(StrategyError, match="not to the DSpark stages of a DeepSeek-V4"):
        strategy.check(options, _target(model_type="deepseek_v4"))


@pytest.mark.parametrize(
    ("draft", "options", "expected"),
    [
        ({"architectures": ["Qwen3ForCausalLM"], "block_size": 7}, {},
         "is not a DSpark draft"),
        ({"architectures": ["Qwen3DSparkModel"]}, {},
         "has no block_size (or dspark_block_size)"),
        ({"architectures": ["Gemma4DSparkModel"], "block_size": 7}, {"dspark_draft_topk": 4},
         "dspark_draft_topk applies to Qwen3DSparkModel and Qwen3OmniDSparkModel drafts only"),
        ({"architectures": ["Qwen3DSparkModel"], "block_size": 7, "vocab_size": 100},
         {"dspark_draft_topk": 101},
         "dspark_draft_topk must be between 1 and the draft's vocabulary size (100), got 101"),
    ],
    ids=["not-dspark", "no-block-size", "topk-architecture", "topk-vocabulary"],
)
def test_a_dspark_draft_that_would_fail_late_is_refused(tmp_path: Path, draft: dict[str, Any],
                                                       options: dict[str, Any],
                                                       expected: str) -> None:
    """Refused before the engine starts, each as vLLM words it (or would fail without a word)."""
    folder = _head(tmp_path, **draft)
    strategy, structured = _load(tmp_path, {"name": "dspark", "model": str(folder), **options})
    with pytest.raises(StrategyError) as info:
        strategy.check(structured, _target())
    assert expected in str(info.value)


def test_a_dspark_draft_that_fits_passes(tmp_path: Path) -> None:
    """A Qwen3 DSpark draft with its block size and a top-k inside its vocabulary passes."""
    folder = _head(tmp_path, architectures=["DSparkDraftModel"], model_type="qwen3",
                   dspark_block_size=7, vocab_size=100)
    strategy, options = _load(tmp_path, {"name": "dspark", "model": str(folder),
                                         "dspark_draft_topk": 100})
    strategy.check(options, _target())


def test_replay_does_not_predict_the_new_methods() -> None:
    """As for mtp: no offline drafter, so a tune predicts them from measured counts only."""
    for method, options in OPTIONS.items():
        kind, reason = prediction_kind(StrategyConfig(name=method, options={
            k: v for k, v in options.items() if k != "name"}), "Qwen/Qwen3-8B")
        assert kind == "measured counts", method
        assert reason is not None
        assert f"replay cannot predict speculative method {method!r}" in reason
    with pytest.raises(ReplayError, match="ngram_gpu's own matcher"):
        proposer_for({"method": "ngram_gpu", "num_speculative_tokens": 3}, 2048)
