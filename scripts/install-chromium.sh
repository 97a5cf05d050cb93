#!/usr/bin/env bash
# Install Debian's chromium for tests/test_report_browser.py, which renders report.html in it.
# Called by scripts/setup.sh. Does nothing (and costs nothing) when chromium is on PATH; as root
# with apt-get it installs the package quietly; otherwise it says the browser test will be skipped.
# Never fatal: without chromium the test skips (or, with CI=true, fails saying why).
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0

how="apt-get install chromium (as root)"
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "specdec setup: chromium not found, so the browser test will be skipped; install it with: $how" >&2
    exit 0
fi
echo "specdec setup: installing Debian's chromium for the browser test" >&2
export DEBIAN_FRONTEND=noninteractive
# apt's output is shown only when it fails.
install() {
    local log
    log="$(apt-get install -y -qq --no-install-recommends chromium 2>&1)" || {
        printf '%s\n' "$log" >&2
        return 1
    }
}
# Fresh images ship without package lists, and old lists name files the mirror no longer has:
# update first when the package is unknown, and once more if the install still fails.
if ! apt-cache show chromium >/dev/null 2>&1; then
    apt-get update -qq >/dev/null || true
fi
if ! install && ! { apt-get update -qq >/dev/null && install; }; then
    echo "specdec setup: could not install chromium, so the browser test will be skipped; try: $how" >&2
fi
