#!/usr/bin/env bash
# Set up (if needed) and run every check CI runs: ruff, mypy --strict, pytest.
# Extra arguments go to pytest (e.g. -k registry, -m "not engine").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
.venv/bin/ruff check .
.venv/bin/mypy
status=0
.venv/bin/pytest "$@" || status=$?
# pytest exits 5 when no test was collected: that is a failure here too.
if [ "$status" -eq 5 ]; then
    echo "specdec test: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
