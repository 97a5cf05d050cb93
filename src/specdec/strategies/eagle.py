"""EAGLE and EAGLE-3 speculation: a small head drafts from the target's hidden states."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from attrs import field, frozen

from specdec.errors import StrategyError
from specdec.interfaces import TargetInfo
from specdec.models import EAGLE3_ALIAS, EAGLE_ALIAS, resolve_model
from specdec.registry import PLUGIN_API_VERSION
from specdec.strategies.checks import read_config, require_method, tensor_shapes
from specdec.validators import positive

log = structlog.get_logger("specdec.strategies.eagle")


@frozen
class EagleOptions:
    """Options of EAGLE speculation: the head's folder and how many tokens it drafts.

    ``model`` defaults to the bundled model's EAGLE-1 head: the one specdec ships, or
    one trained here by ``specdec train eagle``, which wins.
    """

    model: str = EAGLE_ALIAS
    num_speculative_tokens: int = field(default=3, validator=positive)


@frozen
class Eagle3Options:
    """Options of EAGLE-3 speculation: the head's folder and how many tokens it drafts.

    ``model`` defaults to the bundled model's EAGLE-3 head: the one specdec ships, or
    one trained here by ``specdec train eagle --head eagle3``, which wins.
    """

    model: str = EAGLE3_ALIAS
    num_speculative_tokens: int = field(default=3, validator=positive)


def _strip(shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    # Heads are published both with and without a "model." prefix.
    return {k.removeprefix("model."): v for k, v in shapes.items()}


class EagleStrategy:
    """EAGLE-1: one decoder layer fed with [token embedding, target hidden state]."""

    name = "eagle"
    plugin_api_version = PLUGIN_API_VERSION
    options_type: type[EagleOptions | Eagle3Options] = EagleOptions
    method = "eagle"
    fc_inputs = 2
    """``fc`` maps ``fc_inputs`` hidden-size vectors to one."""

    def check(self, options: EagleOptions | Eagle3Options, target: TargetInfo) -> None:
        """VLLM must offer the method and the head's weights must fit the target."""
        require_method(target, self.method)
        head = resolve_model(options.model)
        if not isinstance(head, Path):
            return
        read_config(head, f"{self.method} head")
        shapes = _strip(tensor_shapes(head))
        if not shapes:
            if any(head.glob("*.bin")) or any(head.glob("*.pt")):
                # Pickled weights cannot be inspected without loading them; vLLM will.
                log.warning("head weights are not safetensors; layout not checked",
                            head=str(head))
                return
            msg = f"{self.method} head folder {head} holds no weights (.safetensors or .bin)"
            raise StrategyError(msg)
        self._check_layout(head, shapes, target)

    def _check_layout(self, head: Path, shapes: dict[str, list[int]], target: TargetInfo) -> None:
        if "layers.0.input_layernorm.weight" in shapes:
            msg = (
                f"EAGLE head {head} has layers.0.input_layernorm.weight, which vLLM refuses "
                "(an EAGLE-1 layer 0 takes the fc output without an input norm): remove that "
                "tensor from the checkpoint"
            )
            raise StrategyError(msg)
        self._check_fc(head, shapes, target)

    def _check_fc(self, head: Path, shapes: dict[str, list[int]], target: TargetInfo) -> None:
        fc = shapes.get("fc.weight")
        if fc is None:
            msg = f"{self.method} head {head} has no fc.weight: is it an {self.method} head?"
            raise StrategyError(msg)
        hidden = target.config.get("hidden_size")
        if hidden is not None and fc[1] != self.fc_inputs * hidden:
            msg = (
                f"{self.method} head {head} does not fit the target {target.model}: fc.weight "
                f"takes {fc[1]} inputs, but the target's hidden size {hidden} needs "
                f"{self.fc_inputs} x {hidden} = {self.fc_inputs * hidden}"
            )
            raise StrategyError(msg)

    def speculative_config(self, options: EagleOptions | Eagle3Options,
                           target: TargetInfo) -> dict[str, Any]:
        """``{"method": "eagle", "model": <head folder>, "num_speculative_tokens": k}``."""
        return {
            "method": self.method,
            "model": str(resolve_model(options.model)),
            "num_speculative_tokens": options.num_speculative_tokens,
        }


class Eagle3Strategy(EagleStrategy):
    """EAGLE-3: the head reads three of the target's layers' hidden states."""

    name = "eagle3"
    method = "eagle3"
    options_type = Eagle3Options
    fc_inputs = 3

    def _check_layout(self, head: Path, shapes: dict[str, list[int]], target: TargetInfo) -> None:
        self._check_fc(head, shapes, target)
