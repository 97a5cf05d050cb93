#!/usr/bin/env bash
# The main job. Set up (if needed), prepare the bundled models, then:
#   scripts/main.sh              the quick study (studies/quick.yaml): baseline, ngram, the
#                                truncated draft and EAGLE on the bundled model and sample
#                                benchmark, ending with the verdict table; its folder is
#                                $SPECDEC_MAIN_OUTPUT (default results/quick), resumed if there
#   scripts/main.sh ARGS...      specdec-run ARGS... (one run; e.g. --strategy ngram --limit 8)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
.venv/bin/specdec models prepare smollm2-135m smollm2-135m-draft smollm2-135m-eagle
if [ "$#" -eq 0 ]; then
    exec .venv/bin/specdec study studies/quick.yaml \
        --output-base "${SPECDEC_MAIN_OUTPUT:-results/quick}"
fi
exec .venv/bin/specdec-run "$@"
