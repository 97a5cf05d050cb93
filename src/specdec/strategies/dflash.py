"""DFlash speculation: a block-diffusion draft head fills a whole block of tokens in one pass.

DFlash (z-lab, "Block Diffusion for Flash Speculative Decoding") drafts from
the target's hidden states, as EAGLE-3 does, but not token by token: it feeds
one bonus query and K mask tokens through a few mostly non-causal layers and
reads all K drafts off one forward pass.  vLLM's ``DFlashProposer``
(``vllm/v1/spec_decode/dflash.py``) runs it; the head's ``config.json`` says
which of the target's layers it reads (``dflash_config.target_layer_ids``) and
which token is the mask (``dflash_config.mask_token_id``).

Heads are trained for one target each.  z-lab publishes, among others,
``z-lab/Qwen3-4B-DFlash-b16`` and ``z-lab/Qwen3-8B-DFlash-b16`` (block size 16,
trained with thinking off), ``z-lab/Qwen3-Coder-30B-A3B-DFlash``,
``z-lab/LLaMA3.1-8B-Instruct-DFlash-UltraChat`` and ``z-lab/gpt-oss-20b-DFlash``;
vLLM's sources also name ``z-lab/Qwen3.5-9B-DFlash``,
``z-lab/gemma-4-31B-it-DFlash`` and ``XiaomiMiMo/MiMo-V2.5-Pro-FP4-DFlash``.
None exists for the bundled CPU model, so specdec has no default head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from attrs import field, frozen

from specdec.errors import StrategyError
from specdec.interfaces import TargetInfo
from specdec.models import resolve_model
from specdec.registry import PLUGIN_API_VERSION
from specdec.strategies.checks import (
    read_config,
    require_device,
    require_fields,
    require_method,
)
from specdec.validators import positive

log = structlog.get_logger("specdec.strategies.dflash")

V2_ONLY_ARCHITECTURES = ("DFlash2DraftModel", "LiLiCorrDraftModel")
"""DFlash heads with a candidate head, which only vLLM's Model Runner V2 drafts with."""
_OTHER_DFLASH_ARCHITECTURES = ("LiLiCorrDraftModel", "MuseGlimmerAssistantModel")
"""DFlash architectures vLLM knows whose names do not say DFlash."""


@frozen
class DFlashOptions:
    """Options of DFlash speculation, named and bounded as vLLM's ``SpeculativeConfig`` has them.

    ``model`` is the head: a folder or a Hugging Face hub id (required: no DFlash
    head exists for the bundled model).  ``num_speculative_tokens`` left unset
    lets vLLM take ``n_predict`` from the head's config, which must then have it;
    K = block size - 1 fills the head's block (vLLM adds one bonus query).
    ``attention_backend`` is a vLLM ``AttentionBackendEnum`` name for the head
    alone (vLLM checks it): DFlash needs one with non-causal attention.
    """

    model: str
    num_speculative_tokens: int | None = field(default=None, validator=positive)
    draft_tensor_parallel_size: int | None = field(default=None, validator=positive)
    attention_backend: str | None = None


def architectures(config: dict[str, Any]) -> list[str]:
    """The ``architectures`` a draft's config.json lists (none: empty)."""
    listed = config.get("architectures") or []
    return [str(name) for name in listed] if isinstance(listed, list) else []


class DFlashStrategy:
    """vLLM's ``dflash`` method: a DFlash head drafts K tokens per step in one pass."""

    name = "dflash"
    plugin_api_version = PLUGIN_API_VERSION
    options_type = DFlashOptions

    def check(self, options: DFlashOptions, target: TargetInfo) -> None:
        """VLLM must offer dflash and its fields; a head on disk must be a DFlash head that fits.

        Each refusal is one vLLM would give later: after loading the weights or
        at the first forward pass (layers, hidden size), or while building the
        engine (no ``num_speculative_tokens``, a Model Runner V2-only head on the
        CPU build).  A hub id is not downloaded to check it.
        """
        require_method(target, "dflash")
        config = self.speculative_config(options, target)
        require_fields(target, config)
        require_device(target, config)
        head = resolve_model(options.model)
        if not isinstance(head, Path):
            if options.num_speculative_tokens is None:
                log.info("the head is not on disk: vLLM will read n_predict from its config "
                         "(num_speculative_tokens unset)", head=str(head))
            return
        head_config = read_config(head, "DFlash head")
        self._check_kind(head, head_config)
        self._check_fits(head, head_config, target)
        self._check_k(options, head, head_config)
        self._check_runner(head, head_config, target)

    def _check_kind(self, head: Path, config: dict[str, Any]) -> None:
        names = architectures(config)
        if not names:
            msg = (f"DFlash head {head} lists no architectures in its config.json: vLLM names "
                   "the head's model class after them (DFlash<architecture>)")
            raise StrategyError(msg)
        if isinstance(config.get("dflash_config"), dict) or any(
                "DFlash" in name or name in _OTHER_DFLASH_ARCHITECTURES for name in names):
            return
        msg = (f"{head} is not a DFlash head: its config.json has no dflash_config and its "
               f"architectures ({', '.join(names)}) are not DFlash ones, so vLLM would look for "
               f"a model class DFlash{names[0]}; use a DFlash head trained for the target "
               "(e.g. z-lab/Qwen3-8B-DFlash-b16 for Qwen/Qwen3-8B)")
        raise StrategyError(msg)

    def _check_fits(self, head: Path, config: dict[str, Any], target: TargetInfo) -> None:
        layers = target.config.get("num_hidden_layers")
        dflash_config = config.get("dflash_config") or {}
        layer_ids = dflash_config.get("target_layer_ids") if isinstance(dflash_config, dict) \
            else None
        if isinstance(layers, int) and isinstance(layer_ids, list):
            outside = [i for i in layer_ids if not isinstance(i, int) or not 0 <= i < layers]
            if outside:
                msg = (f"DFlash head {head} reads target layers {layer_ids} "
                       f"(dflash_config.target_layer_ids), but the target {target.model} has "
                       f"{layers} layers (0-{layers - 1}): the head was trained for another "
                       "model")
                raise StrategyError(msg)
        # vLLM sizes the head's fc from target_hidden_size, else the head's own hidden_size.
        declared = config.get("target_hidden_size") or config.get("hidden_size")
        hidden = target.config.get("hidden_size")
        if isinstance(declared, int) and isinstance(hidden, int) and declared != hidden:
            msg = (f"DFlash head {head} was built for a target hidden size of {declared} "
                   f"(target_hidden_size, else hidden_size, in its config.json), but the target "
                   f"{target.model} has {hidden}: the head was trained for another model")
            raise StrategyError(msg)

    def _check_k(self, options: DFlashOptions, head: Path, config: dict[str, Any]) -> None:
        if options.num_speculative_tokens is not None or config.get("n_predict") is not None:
            return
        dflash_config = config.get("dflash_config")
        block = config.get("block_size") or (
            dflash_config.get("block_size") if isinstance(dflash_config, dict) else None)
        hint = (f" (the head's block size is {block}: {block - 1} fills it)"
                if isinstance(block, int) and block > 1 else "")
        msg = (f"DFlash head {head} has no n_predict in its config.json, so vLLM needs "
               f"num_speculative_tokens: set strategy.num_speculative_tokens{hint}")
        raise StrategyError(msg)

    def _check_runner(self, head: Path, config: dict[str, Any], target: TargetInfo) -> None:
        if target.engine is None or target.engine.device != "cpu":
            return
        runner = ("on vLLM's CPU build, which runs Model Runner V1 (V2 needs Triton, which the "
                  "CPU build lacks)")
        candidate = sorted(set(architectures(config)) & set(V2_ONLY_ARCHITECTURES))
        if candidate:
            msg = (f"DFlash head {head} ({candidate[0]}) has a candidate head, which only "
                   f"vLLM's Model Runner V2 uses: it cannot run {runner} ('Model Runner V1 "
                   "does not support: DFlash candidate-head drafts'); run it on a GPU")
            raise StrategyError(msg)
        kinds = config.get("layer_types") or []
        sliding = sum(kind == "sliding_attention" for kind in kinds)
        if 0 < sliding < len(kinds):
            msg = (f"DFlash head {head} mixes sliding-window and full attention layers, which "
                   f"only vLLM's Model Runner V2 runs: it cannot run {runner} ('Model Runner V1 "
                   "does not support: mixed sliding/full dflash drafts'); run it on a GPU")
            raise StrategyError(msg)

    def speculative_config(self, options: DFlashOptions, target: TargetInfo) -> dict[str, Any]:
        """``{"method": "dflash", "model": <head>, ...}``; unset options are left to vLLM."""
        config: dict[str, Any] = {"method": "dflash", "model": str(resolve_model(options.model))}
        for key in ("num_speculative_tokens", "draft_tensor_parallel_size", "attention_backend"):
            value = getattr(options, key)
            if value is not None:
                config[key] = value
        return config
