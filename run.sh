#!/usr/bin/env bash
# The seed's interface: run.sh BENCHMARK CONFIG OUTPUT_DIR [more specdec-run flags]
set -euo pipefail
if [ "$#" -lt 3 ]; then
    echo "usage: run.sh BENCHMARK CONFIG OUTPUT_DIR [specdec-run flags...]" >&2
    exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
benchmark="$1" config="$2" output="$3"
shift 3
"$root/scripts/setup.sh"
exec "$root/.venv/bin/specdec-run" --benchmark "$benchmark" --config "$config" \
    --output-dir "$output" "$@"
