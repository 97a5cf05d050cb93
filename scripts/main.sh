#!/usr/bin/env bash
# Set up (if needed), prepare the bundled models, and run the main job: the
# bundled sample benchmark on the bundled model. Extra arguments go to specdec-run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
.venv/bin/specdec models prepare smollm2-135m smollm2-135m-draft
exec .venv/bin/specdec-run "$@"
