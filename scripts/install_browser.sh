#!/usr/bin/env bash
# Installs Debian's chromium for the end-to-end browser test (tests/app/test_e2e_browser.py).
# Quiet and idempotent: does nothing when /usr/bin/chromium is already there.
# The Python side (playwright) comes from pyproject.toml's dev extra (make setup); it drives this system browser
# (executable_path=/usr/bin/chromium), so `playwright install` (a download) is never needed.
set -euo pipefail
if [[ -x /usr/bin/chromium ]]; then
    exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
    SUDO=sudo
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
if [[ ! -x /usr/bin/chromium ]]; then
    echo "install_browser.sh: apt-get finished but /usr/bin/chromium is missing" >&2
    exit 1
fi
