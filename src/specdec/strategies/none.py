"""The baseline: no speculation."""

from __future__ import annotations

from typing import Any

from attrs import frozen

from specdec.interfaces import TargetInfo
from specdec.registry import PLUGIN_API_VERSION


@frozen
class NoOptions:
    """The baseline takes no options."""


class NoSpeculation:
    """Plain decoding, the baseline every speedup is measured against."""

    name = "none"
    plugin_api_version = PLUGIN_API_VERSION
    options_type = NoOptions

    def check(self, options: NoOptions, target: TargetInfo) -> None:
        """Nothing to check."""

    def speculative_config(self, options: NoOptions, target: TargetInfo) -> dict[str, Any] | None:
        """No speculative_config: vLLM decodes one token per step."""
        return None
