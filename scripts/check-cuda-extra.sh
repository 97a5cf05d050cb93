#!/usr/bin/env bash
# Does `SPECDEC_EXTRA=cuda scripts/setup.sh` resolve on this machine, without a GPU?
# Runs pip's resolver for specdec[cuda,dev,distributed] (what setup.sh installs) in a
# throw-away venv with --dry-run: pip reads each wheel's metadata (PEP 658) and downloads no
# CUDA wheel. Prints what would be installed. tests/test_cuda_extra.py runs it.
# About 75 s and a few MB on this project's machine (2026-12-04: vllm 0.33.0, torch 2.14.0,
# 226 packages). Needs the network to PyPI.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check --dry-run \
    --report "$work/report.json" -e "$root[cuda,dev,distributed]"
python3 - "$work/report.json" <<'PY'
import json
import sys

install = json.load(open(sys.argv[1], encoding="utf-8"))["install"]
versions = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in install}
print(f"specdec[cuda,dev,distributed] resolves: {len(install)} packages; "
      + ", ".join(f"{name} {versions[name]}" for name in ("vllm", "torch", "transformers", "ray")
                  if name in versions))
missing = [name for name in ("vllm", "torch", "ray") if name not in versions]
if missing:
    sys.exit(f"the resolution has no {', '.join(missing)}")
PY
