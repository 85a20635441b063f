#!/usr/bin/env bash
# The test command: the whole suite, offline, against SQLite and a real PostgreSQL server.
# PostgreSQL (Debian's package, installed if missing) is started on 127.0.0.1 by scripts/postgres.sh
# and stopped afterwards; set SEIKO_TEST_PG_URL to use a server of your own instead.
# Extra arguments go to pytest (e.g. -m slow, -k name).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
bash scripts/install_browser.sh   # Debian's chromium, for the end-to-end browser test
started_pg=0
if [[ -z "${SEIKO_TEST_PG_URL:-}" ]]; then
    SEIKO_TEST_PG_URL="$(bash scripts/postgres.sh start)"
    export SEIKO_TEST_PG_URL
    started_pg=1
fi
cleanup() { if [[ "$started_pg" == 1 ]]; then bash scripts/postgres.sh stop >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT
# Two processes (pytest-xdist), one per core of a 2-core machine: the suite is mostly one busy thread, so one
# process left the second core idle. Each process takes whole test files (--dist loadfile: a file's module fixtures
# are built once) and a PostgreSQL database of its own (tests/conftest.py). SEIKO_TEST_WORKERS=N for N processes;
# 0 runs the suite in this one process, as before.
workers="${SEIKO_TEST_WORKERS:-$(( $(nproc) < 2 ? $(nproc) : 2 ))}"
.venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
