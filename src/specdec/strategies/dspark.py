"""DSpark speculation: a parallel draft head with a Markov correction, from the target's states.

DSpark drafts a block of tokens in parallel from the target's hidden states
(like DFlash), then refines each position with a small Markov head over the
tokens drafted before it; with ``enable_adaptive_verification`` a confidence
head trims how many of them the target verifies.  vLLM runs it from
``SpeculativeConfig`` method ``dspark``, in Model Runner V2 only.

Two kinds of checkpoint exist: a separate draft (architectures
``Qwen3DSparkModel``, ``Qwen3OmniDSparkModel``, ``Gemma4DSparkModel`` or
``K3DSparkModel``; vLLM's sources name ``deepseek-ai/dspark_qwen3_8b_block7``),
or DSpark stages shipped inside a DeepSeek-V4 / V4.1 target checkpoint, used
when no ``model`` is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from specdec.strategies.dflash import architectures
from specdec.validators import positive

IN_TARGET_MODEL_TYPES = ("deepseek_v4", "deepseek_v41")
"""Target model types whose checkpoints carry DSpark stages (no separate draft needed)."""
TOPK_ARCHITECTURES = ("Qwen3DSparkModel", "Qwen3OmniDSparkModel")
"""The DSpark drafts vLLM applies ``dspark_draft_topk`` to."""


@frozen
class DSparkOptions:
    """Options of DSpark speculation, named and bounded as vLLM's ``SpeculativeConfig`` has them.

    ``model`` is the draft (a folder or hub id); unset, vLLM loads the DSpark
    stages of the target's own checkpoint (DeepSeek-V4 only), and then needs
    ``num_speculative_tokens``.  With a draft, ``num_speculative_tokens`` left
    unset takes its block size (``block_size`` or ``dspark_block_size`` in its
    config).
    ``dspark_draft_topk`` evaluates the Markov head on the top-k base candidates
    only (Qwen3 DSpark drafts; at most the draft's vocabulary).
    ``enable_adaptive_verification`` lets the draft's confidence trim the block.
    """

    model: str | None = None
    num_speculative_tokens: int | None = field(default=None, validator=positive)
    dspark_draft_topk: int | None = field(default=None, validator=positive)
    enable_adaptive_verification: bool = False
    draft_tensor_parallel_size: int | None = field(default=None, validator=positive)


class DSparkStrategy:
    """vLLM's ``dspark`` method: parallel drafting with a Markov head, verified by the target."""

    name = "dspark"
    plugin_api_version = PLUGIN_API_VERSION
    options_type = DSparkOptions

    def check(self, options: DSparkOptions, target: TargetInfo) -> None:
        """VLLM must offer dspark and its fields, on a GPU; the draft must be a DSpark one.

        On the CPU build vLLM refuses dspark while building the engine (it is
        Model Runner V2's only, and V2 needs Triton): refused here instead.
        Without ``model`` the target must be a DeepSeek-V4 checkpoint, or vLLM
        would load the target itself as a DSpark draft.  A hub id is not
        downloaded to check it.
        """
        require_method(target, "dspark")
        config = self.speculative_config(options, target)
        require_fields(target, config)
        require_device(target, config)
        if options.model is None:
            self._check_in_target(options, target)
            return
        draft = resolve_model(options.model)
        if isinstance(draft, Path):
            self._check_draft(options, draft, read_config(draft, "DSpark draft"))

    def _check_in_target(self, options: DSparkOptions, target: TargetInfo) -> None:
        if options.num_speculative_tokens is None:
            # SpeculativeConfig.__post_init__ takes the target as the draft only when k is given.
            msg = ("dspark without a model needs num_speculative_tokens: only then does vLLM "
                   "load the DSpark stages of the target's checkpoint (set "
                   "strategy.num_speculative_tokens, or name a draft with strategy.model)")
            raise StrategyError(msg)
        model_type = target.config.get("model_type")
        if model_type is not None and model_type not in IN_TARGET_MODEL_TYPES:
            msg = (f"dspark without a model loads DSpark stages from the target's own "
                   f"checkpoint, which only DeepSeek-V4 ({', '.join(IN_TARGET_MODEL_TYPES)}) "
                   f"has; the target {target.model} is {model_type!r}: name a DSpark draft "
                   "trained for it (strategy.model)")
            raise StrategyError(msg)
        if options.dspark_draft_topk is not None:
            msg = (f"dspark_draft_topk applies to {' and '.join(TOPK_ARCHITECTURES)} drafts "
                   "only, not to the DSpark stages of a DeepSeek-V4 checkpoint: leave it unset")
            raise StrategyError(msg)

    def _check_draft(self, options: DSparkOptions, draft: Path, config: dict[str, Any]) -> None:
        names = architectures(config)
        if not any("DSpark" in name for name in names):
            msg = (f"{draft} is not a DSpark draft: its config.json lists architectures "
                   f"{names or 'none'}, none a DSpark one (such as Qwen3DSparkModel), and vLLM "
                   "would load it as DeepSeek-V4's DSpark stages")
            raise StrategyError(msg)
        if options.num_speculative_tokens is None and not (
                config.get("block_size") or config.get("dspark_block_size")):
            msg = (f"DSpark draft {draft} has no block_size (or dspark_block_size) in its "
                   "config.json, so vLLM needs num_speculative_tokens: set "
                   "strategy.num_speculative_tokens")
            raise StrategyError(msg)
        topk = options.dspark_draft_topk
        if topk is None:
            return
        qwen3 = "DSparkDraftModel" in names and config.get("model_type") == "qwen3"
        if not qwen3 and not set(names) & set(TOPK_ARCHITECTURES):
            msg = (f"dspark_draft_topk applies to {' and '.join(TOPK_ARCHITECTURES)} drafts "
                   f"only; {draft} is {', '.join(names)}: leave it unset")
            raise StrategyError(msg)
        vocab = config.get("draft_vocab_size") or config.get("vocab_size")
        if isinstance(vocab, int) and topk > vocab:
            msg = (f"dspark_draft_topk must be between 1 and the draft's vocabulary size "
                   f"({vocab}), got {topk}")
            raise StrategyError(msg)

    def speculative_config(self, options: DSparkOptions, target: TargetInfo) -> dict[str, Any]:
        """``{"method": "dspark", ...}``; unset options are left to vLLM."""
        config: dict[str, Any] = {"method": "dspark"}
        if options.model is not None:
            config["model"] = str(resolve_model(options.model))
        if options.enable_adaptive_verification:
            config["enable_adaptive_verification"] = True
        for key in ("num_speculative_tokens", "dspark_draft_topk", "draft_tensor_parallel_size"):
            value = getattr(options, key)
            if value is not None:
                config[key] = value
        return config
