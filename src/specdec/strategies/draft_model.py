"""Draft-model speculation: a smaller model with the same tokenizer drafts tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attrs import field, frozen

from specdec.interfaces import TargetInfo
from specdec.models import DRAFT_ALIAS, resolve_model
from specdec.registry import PLUGIN_API_VERSION
from specdec.strategies.checks import check_same_vocabulary, read_config, require_method
from specdec.validators import positive


@frozen
class DraftModelOptions:
    """Options of draft-model speculation.

    ``model`` is a Hugging Face folder or a bundled alias (default: the bundled
    truncated draft of the bundled model).
    """

    model: str = DRAFT_ALIAS
    num_speculative_tokens: int = field(default=3, validator=positive)
    draft_tensor_parallel_size: int | None = field(default=None, validator=positive)
    max_model_len: int | None = field(default=None, validator=positive)
    quantization: str | None = None


class DraftModelStrategy:
    """A separate, smaller model drafts; the target verifies."""

    name = "draft_model"
    plugin_api_version = PLUGIN_API_VERSION
    options_type = DraftModelOptions

    def check(self, options: DraftModelOptions, target: TargetInfo) -> None:
        """VLLM must offer draft_model, and the draft must share the target's vocabulary."""
        require_method(target, "draft_model")
        draft = resolve_model(options.model)
        if isinstance(draft, Path):
            check_same_vocabulary(target, draft, read_config(draft, "draft model"))

    def speculative_config(self, options: DraftModelOptions, target: TargetInfo) -> dict[str, Any]:
        """``{"method": "draft_model", "model": <folder>, ...}``."""
        config: dict[str, Any] = {
            "method": "draft_model",
            "model": str(resolve_model(options.model)),
            "num_speculative_tokens": options.num_speculative_tokens,
        }
        for key in ("draft_tensor_parallel_size", "max_model_len", "quantization"):
            value = getattr(options, key)
            if value is not None:
                config[key] = value
        return config
