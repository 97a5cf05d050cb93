"""Multi-token prediction: the target's own MTP layers draft (DeepSeek, Qwen3-Next, ...)."""

from __future__ import annotations

from typing import Any

from attrs import field, frozen

from specdec.errors import StrategyError
from specdec.interfaces import TargetInfo
from specdec.registry import PLUGIN_API_VERSION
from specdec.strategies.checks import require_method
from specdec.validators import positive

MTP_CONFIG_KEYS = ("num_nextn_predict_layers", "mtp_num_hidden_layers", "num_mtp_layers")
"""config.json keys by which model families declare their MTP layers."""


@frozen
class MtpOptions:
    """Options of MTP speculation."""

    num_speculative_tokens: int = field(default=1, validator=positive)


class MtpStrategy:
    """Use the MTP modules shipped inside the target model."""

    name = "mtp"
    plugin_api_version = PLUGIN_API_VERSION
    options_type = MtpOptions

    def check(self, options: MtpOptions, target: TargetInfo) -> None:
        """VLLM must offer mtp and the target must carry MTP layers."""
        require_method(target, "mtp", since="0.10 (the generic 'mtp' method)")
        if target.config and not any(target.config.get(k) for k in MTP_CONFIG_KEYS):
            msg = (
                f"target {target.model} declares no MTP layers (none of "
                f"{', '.join(MTP_CONFIG_KEYS)} in its config.json): use a model trained with "
                "MTP, such as DeepSeek-V3 or Qwen3-Next, or another strategy"
            )
            raise StrategyError(msg)

    def speculative_config(self, options: MtpOptions, target: TargetInfo) -> dict[str, Any]:
        """``{"method": "mtp", "num_speculative_tokens": k}``."""
        return {"method": "mtp", "num_speculative_tokens": options.num_speculative_tokens}
