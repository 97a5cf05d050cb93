"""Any ``speculative_config`` passed through, its keys checked against the engine's vLLM."""

from __future__ import annotations

import difflib
from typing import Any

import structlog

from specdec.errors import StrategyError
from specdec.interfaces import TargetInfo
from specdec.registry import PLUGIN_API_VERSION
from specdec.strategies.checks import require_method
from specdec.strategies.methods import device_note, version_note

log = structlog.get_logger("specdec.strategies.raw")


class RawStrategy:
    """Pass the strategy's options to vLLM as ``speculative_config`` unchanged.

    For methods and settings specdec has no dedicated strategy for.  Every key
    is checked against the engine's vLLM's ``SpeculativeConfig`` fields, so a
    typo fails before the engine starts (an engine that cannot list its fields,
    such as a server, leaves the keys to vLLM).
    """

    name = "raw"
    plugin_api_version = PLUGIN_API_VERSION
    options_type = dict[str, Any]

    def check(self, options: dict[str, Any], target: TargetInfo) -> None:
        """Every key must be a SpeculativeConfig field; the method must exist."""
        if not options:
            msg = "the raw strategy needs speculative_config keys, e.g. method: ngram"
            raise StrategyError(msg)
        fields = target.speculative_config_fields
        if not fields:
            log.info("the engine cannot tell its speculative_config fields; the keys are "
                     "left to vLLM to check", keys=sorted(options))
        else:
            unknown = sorted(set(options) - fields)
            for key in unknown:
                note = version_note(key, "field", target.vllm_version)
                if note is not None:
                    raise StrategyError(note)
            if unknown:
                hints = []
                for key in unknown:
                    close = difflib.get_close_matches(key, sorted(fields), n=1)
                    hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
                msg = (
                    f"vLLM {target.vllm_version}'s speculative_config has no field "
                    f"{', '.join(hints)}"
                )
                raise StrategyError(msg)
        method = options.get("method")
        if isinstance(method, str):
            require_method(target, method)
        refused = device_note(options, target.engine.device if target.engine else None)
        if refused is not None:
            raise StrategyError(refused)

    def speculative_config(self, options: dict[str, Any], target: TargetInfo) -> dict[str, Any]:
        """The options themselves."""
        return dict(options)
