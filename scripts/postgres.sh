#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests: scripts/postgres.sh start|stop|status|url
#
#   export SEIKO_TEST_PG_URL="$(scripts/postgres.sh start)"   # start (idempotent), print the URL
#   scripts/postgres.sh stop
#
# Installs Debian's postgresql package if its binaries are missing (needs root), keeps the cluster
# in ${PGDATA_DIR:-/tmp/seiko-pg}, listens on 127.0.0.1:${PGPORT:-55432} with trust authentication
# (local test use only; fsync is off, so a crash can lose data), and creates database seiko_test.
# The server runs as the `postgres` OS user when started as root (initdb refuses root).
# Only the URL goes to stdout; progress messages go to stderr.
set -euo pipefail

PGDATA_DIR="${PGDATA_DIR:-/tmp/seiko-pg}"
PGPORT="${PGPORT:-55432}"
PGDATABASE_NAME="${PGDATABASE_NAME:-seiko_test}"
DATA="$PGDATA_DIR/data"
LOG="$PGDATA_DIR/server.log"
URL="postgresql+psycopg://postgres@127.0.0.1:${PGPORT}/${PGDATABASE_NAME}"

say() { echo "postgres.sh: $*" >&2; }
die() { say "$*"; exit 1; }

find_bindir() {
    local dir
    # Debian keeps the server binaries per version; take the newest.
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then echo "$dir"; return 0; fi
    done
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v pg_ctl)"; return 0
    fi
    return 1
}

ensure_installed() {
    if BINDIR="$(find_bindir)"; then return 0; fi
    [[ "$(id -u)" == 0 ]] || die "PostgreSQL is not installed and installing it needs root: apt-get install postgresql"
    say "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    BINDIR="$(find_bindir)" || die "postgresql was installed but no initdb/pg_ctl was found under /usr/lib/postgresql/*/bin"
}

# Run a command as the user that owns the cluster.
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

is_running() {
    [[ -f "$DATA/PG_VERSION" ]] && as_owner "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

psql_admin() {
    as_owner "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres "$@"
}

start() {
    ensure_installed
    if [[ "$(id -u)" == 0 ]]; then
        getent passwd postgres >/dev/null || die "there is no 'postgres' OS user to run the server (install the postgresql package)"
    fi
    mkdir -p "$PGDATA_DIR"
    [[ "$(id -u)" == 0 ]] && chown postgres: "$PGDATA_DIR"
    as_owner test -w "$PGDATA_DIR" || die "$PGDATA_DIR is not writable by the postgres user; choose another PGDATA_DIR"
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        say "creating a cluster in $DATA"
        as_owner "$BINDIR/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null 2>"$PGDATA_DIR/initdb.err" \
            || die "initdb failed: $(cat "$PGDATA_DIR/initdb.err")"
    fi
    if ! is_running; then
        say "starting the server on 127.0.0.1:$PGPORT (log: $LOG)"
        as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
            -o "-p $PGPORT -k $PGDATA_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            start >/dev/null || die "the server did not start; see $LOG"
    fi
    if [[ -z "$(psql_admin -tA -c "SELECT 1 FROM pg_database WHERE datname = '$PGDATABASE_NAME'")" ]]; then
        say "creating database $PGDATABASE_NAME"
        psql_admin -c "CREATE DATABASE \"$PGDATABASE_NAME\""
    fi
    echo "$URL"
}

stop() {
    BINDIR="$(find_bindir)" || { say "PostgreSQL is not installed; nothing to stop"; return 0; }
    if is_running; then
        as_owner "$BINDIR/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
        say "stopped"
    else
        say "not running"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) BINDIR="$(find_bindir)" && is_running && say "running: $URL" || { say "not running"; exit 3; } ;;
    url) echo "$URL" ;;
    *) die "usage: scripts/postgres.sh start|stop|status|url" ;;
esac
