"""N-gram speculation on the GPU: vLLM's ``ngram_gpu``, the prompt lookup of ``ngram`` batched.

vLLM's ``NgramProposerGPU`` (``vllm/v1/spec_decode/ngram_proposer_gpu.py``)
matches the last n tokens of every request at once, on the device, for each n
from ``prompt_lookup_min`` to ``prompt_lookup_max``: it takes the earliest
earlier occurrence of the longest n that matches and drafts the tokens that
followed it.  No model drafts, so nothing is loaded.  It needs a GPU: on vLLM's
CPU build the engine dies while starting (see :func:`check`).
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

from specdec.interfaces import TargetInfo
from specdec.registry import PLUGIN_API_VERSION
from specdec.strategies.checks import require_device, require_fields, require_method
from specdec.strategies.ngram import NgramOptions


@frozen
class NgramGpuOptions(NgramOptions):
    """Options of ``ngram_gpu``: ``ngram``'s, with the same bounds and defaults.

    vLLM completes and checks the window of both methods in one place
    (``SpeculativeConfig.__post_init__``: 5 and 5 when neither is given, each at
    least 1, ``prompt_lookup_min <= prompt_lookup_max``); they are written out so
    every run records them.
    """


class NgramGpuStrategy:
    """vLLM's ``ngram_gpu`` method: n-gram lookup for the whole batch on the GPU."""

    name = "ngram_gpu"
    plugin_api_version = PLUGIN_API_VERSION
    options_type = NgramGpuOptions

    def check(self, options: NgramGpuOptions, target: TargetInfo) -> None:
        """VLLM must offer ngram_gpu and its fields, on a device that runs it (not the CPU).

        On vLLM 0.32.0's CPU build the model runner allocates pinned host
        buffers for ``ngram_gpu`` and the engine dies while starting
        ("pin_memory=True requires a CUDA or other accelerator backend"; run on
        this project's machine, 2026-12-04): refused here instead.
        """
        require_method(target, "ngram_gpu")
        config = self.speculative_config(options, target)
        require_fields(target, config)
        require_device(target, config)

    def speculative_config(self, options: NgramGpuOptions, target: TargetInfo) -> dict[str, Any]:
        """``{"method": "ngram_gpu", ...}`` with the lookup window written out."""
        return {
            "method": "ngram_gpu",
            "num_speculative_tokens": options.num_speculative_tokens,
            "prompt_lookup_min": options.prompt_lookup_min,
            "prompt_lookup_max": options.prompt_lookup_max,
        }
