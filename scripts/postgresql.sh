#!/usr/bin/env bash
# A throwaway PostgreSQL for the job-tracking tests and benchmarks: Debian's postgresql 15 binaries, loopback only.
#
#   scripts/postgresql.sh [start]   initdb (first time) and start a server on 127.0.0.1:$PORT; a no-op when it runs
#   scripts/postgresql.sh stop      stop it (the data directory stays, so the next start is quick)
#   scripts/postgresql.sh status    say whether it runs; print the URL the tests use
#   scripts/postgresql.sh url       print that URL alone: SWARROW_TEST_POSTGRES_URL=$(scripts/postgresql.sh url)
#
# The server runs as the `postgres` user when started by root (PostgreSQL refuses to run as root), with its own
# data directory under /tmp and a port of its own (55432, not the packaged cluster's 5432), so it never touches a
# system cluster. It creates the role and database `swarrow` (password `swarrow`, scram-sha-256 over TCP).
set -euo pipefail

PORT=${SWARROW_POSTGRES_PORT:-55432}
HOST=127.0.0.1
BASE=${SWARROW_POSTGRES_DIR:-/tmp/swarrow-postgresql-$PORT}
DATA=$BASE/data
SOCK=$BASE/sock
LOG=$BASE/server.log
BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
URL="postgresql://swarrow:swarrow@$HOST:$PORT/swarrow"

log() { printf '[postgresql.sh] %s\n' "$*"; }

[ -x "$BIN/pg_ctl" ] || { log "error: $BIN/pg_ctl not found: install Debian's postgresql (apt-get install postgresql)" >&2; exit 1; }

if [ "$(id -u)" = 0 ]; then
    RUN_AS=postgres
    as_pg() { runuser -u postgres -- "$@"; }
else
    RUN_AS=$(id -un)
    as_pg() { "$@"; }
fi

running() { as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

start() {
    mkdir -p "$BASE" "$SOCK"
    [ "$RUN_AS" = postgres ] && chown -R postgres:postgres "$BASE"
    if [ ! -s "$DATA/PG_VERSION" ]; then
        log "initdb in $DATA (as $RUN_AS)"
        as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 >/dev/null
        {
            echo "listen_addresses = '$HOST'"
            echo "port = $PORT"
            echo "unix_socket_directories = '$SOCK'"
            echo "fsync = off"                 # a test server: speed over durability
            echo "synchronous_commit = off"
            echo "full_page_writes = off"
            echo "max_connections = 100"
        } | as_pg tee -a "$DATA/postgresql.conf" >/dev/null
    fi
    if running; then
        log "already running on $HOST:$PORT"
    else
        log "starting on $HOST:$PORT (log: $LOG)"
        as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null
    fi
    psql_admin() { as_pg "$BIN/psql" -h "$SOCK" -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
    if [ "$(psql_admin -d postgres -c "select 1 from pg_roles where rolname = 'swarrow'")" != 1 ]; then
        psql_admin -d postgres -c "create role swarrow login password 'swarrow'"
    fi
    if [ "$(psql_admin -d postgres -c "select 1 from pg_database where datname = 'swarrow'")" != 1 ]; then
        psql_admin -d postgres -c "create database swarrow owner swarrow"
    fi
    log "ready: $URL"
}

stop() {
    if running; then
        log "stopping the server on $HOST:$PORT"
        as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null
    else
        log "not running"
    fi
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status)
        if running; then log "running on $HOST:$PORT: $URL"; else log "not running ($DATA)"; exit 3; fi
        ;;
    url) echo "$URL" ;;
    *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
