"""The README's GPU recipe, up to the point a GPU is needed: ``SPECDEC_EXTRA=cuda
scripts/setup.sh`` installs ``specdec[cuda,dev,distributed]``; pip's resolver must find a
consistent set for it on this kind of machine (Linux x86-64, CPython 3.11).

``scripts/check-cuda-extra.sh`` runs the resolver in a throw-away venv with ``--dry-run``:
wheel metadata only (PEP 658), no CUDA wheel downloaded, nothing installed here.  It needs
the network to PyPI, as set-up does.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.installs


def test_the_cuda_extra_resolves_with_vllm_0_33_or_later() -> None:
    result = subprocess.run(["bash", str(ROOT / "scripts" / "check-cuda-extra.sh")],
                            capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    found = re.search(r"resolves: (\d+) packages; vllm (\d+)\.(\d+)\S*, torch \S+, "
                      r"transformers \S+, ray \S+$", result.stdout.strip())
    assert found, result.stdout
    assert (int(found[2]), int(found[3])) >= (0, 33), result.stdout
