"""Suffix decoding: drafts from suffix trees over this and earlier requests (Arctic Inference)."""

from __future__ import annotations

import importlib.util
from typing import Any

import structlog
from attrs import field, frozen

from specdec.errors import StrategyError
from specdec.interfaces import TargetInfo
from specdec.registry import PLUGIN_API_VERSION
from specdec.strategies.checks import require_method
from specdec.validators import number, positive

log = structlog.get_logger("specdec.strategies.suffix")


@frozen
class SuffixOptions:
    """Options of suffix decoding, with vLLM's defaults written out.

    ``num_speculative_tokens`` left unset lets vLLM use the tree depth as the limit.
    The bounds are vLLM's (``SpeculativeConfig._validate_suffix_decoding``); 0
    cached requests turns the global tree off.
    """

    num_speculative_tokens: int | None = field(default=None, validator=positive)
    max_tree_depth: int = field(default=24, validator=positive)
    max_cached_requests: int = field(default=10000, validator=number(ge=0))
    max_spec_factor: float = field(default=1.0, validator=number(ge=0))
    min_token_prob: float = field(default=0.1, validator=number(ge=0, le=1))


class SuffixStrategy:
    """vLLM's ``suffix`` method, which needs the ``arctic-inference`` package."""

    name = "suffix"
    plugin_api_version = PLUGIN_API_VERSION
    options_type = SuffixOptions

    def check(self, options: SuffixOptions, target: TargetInfo) -> None:
        """VLLM must offer suffix and arctic-inference must be importable where it runs."""
        require_method(target, "suffix", since="0.11")
        if not target.local:
            # Another environment's packages (a server's) cannot be seen from here.
            log.info("the engine runs elsewhere; not checking that it has arctic-inference")
            return
        if importlib.util.find_spec("arctic_inference") is None:
            msg = (
                "suffix decoding needs the arctic-inference package, which is not installed: "
                "`pip install arctic-inference` (vLLM names 0.1.1)"
            )
            raise StrategyError(msg)

    def speculative_config(self, options: SuffixOptions, target: TargetInfo) -> dict[str, Any]:
        """``{"method": "suffix", "suffix_decoding_*": ...}``."""
        config: dict[str, Any] = {
            "method": "suffix",
            "suffix_decoding_max_tree_depth": options.max_tree_depth,
            "suffix_decoding_max_cached_requests": options.max_cached_requests,
            "suffix_decoding_max_spec_factor": options.max_spec_factor,
            "suffix_decoding_min_token_prob": options.min_token_prob,
        }
        if options.num_speculative_tokens is not None:
            config["num_speculative_tokens"] = options.num_speculative_tokens
        return config
