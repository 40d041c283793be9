#!/usr/bin/env bash
# System services the tests need, installed from Debian packages when missing:
#   - a private PostgreSQL cluster on 127.0.0.1:55432 (not the default port, to avoid clashes),
#     trust auth, database spikeprune_test, data under /tmp/spikeprune-pg;
#   - Debian's chromium, a headless browser for the HTML report tests.
#
# Usage: scripts/services.sh start|stop|env
#   start  install what is missing, start PostgreSQL (idempotent; fast when already running)
#   stop   stop PostgreSQL (the data directory is kept)
#   env    print the variables the tests read: eval "$(scripts/services.sh env)"
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=55432
PG_DB=spikeprune_test
PG_ROOT=/tmp/spikeprune-pg        # holds data/, the socket and server.log
PG_DATA=$PG_ROOT/data
CHROMIUM=/usr/bin/chromium

log() { echo "services: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Run a command with root rights: directly as root, else through sudo.
as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

# Run a PostgreSQL server command as the cluster owner: the `postgres` OS user when we are root
# (the server refuses to run as root), else the current user. From / so that the owner can
# always read its working directory.
as_pg() {
    if [[ $EUID -eq 0 ]]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# The newest installed PostgreSQL server's bin directory, or nothing.
pg_bindir() {
    local initdb
    initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
    [[ -n $initdb ]] && dirname "$initdb"
    return 0
}

# Install the Debian packages of whatever is missing: one apt-get update, one apt-get install.
install_missing() {
    local missing=()
    [[ -n $(pg_bindir) ]] || missing+=(postgresql)
    [[ -x $CHROMIUM ]] || missing+=(chromium)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    # 9>&-: a daemon the package starts must not inherit (and hold) our lock.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" 9>&-
    [[ -n $(pg_bindir) ]] || die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found"
    [[ -x $CHROMIUM ]] || die "chromium installed but $CHROMIUM is missing"
}

pg_running() { as_pg "$1/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; }

# Create the cluster unless a usable one (same major version) is already there. It is a
# throw-away test cluster: durability is switched off for speed.
pg_init() {
    local bin=$1 major
    major=$(basename "$(dirname "$bin")")
    if [[ -f $PG_DATA/PG_VERSION && $(cat "$PG_DATA/PG_VERSION") == "$major" ]]; then return 0; fi
    log "creating PostgreSQL $major cluster in $PG_DATA"
    rm -rf "$PG_DATA"
    mkdir -p "$PG_ROOT"
    [[ $EUID -eq 0 ]] && chown postgres:postgres "$PG_ROOT"
    as_pg "$bin/initdb" -D "$PG_DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C >/dev/null
    as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null <<EOF
# spikeprune test cluster (scripts/services.sh)
listen_addresses = '$PG_HOST'
port = $PG_PORT
unix_socket_directories = '$PG_ROOT'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    as_pg tee "$PG_DATA/pg_hba.conf" >/dev/null <<EOF
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   $PG_HOST/32   trust
EOF
}

pg_start() {
    local bin
    bin=$(pg_bindir)
    pg_init "$bin"
    if ! pg_running "$bin"; then
        log "starting PostgreSQL on $PG_HOST:$PG_PORT"
        as_pg "$bin/pg_ctl" start -D "$PG_DATA" -l "$PG_ROOT/server.log" -w -t 60 >/dev/null 9>&- \
            || { tail -n 20 "$PG_ROOT/server.log" >&2; die "PostgreSQL did not start (log: $PG_ROOT/server.log)"; }
    fi
    local psql=("$bin/psql" -h "$PG_HOST" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA)
    if [[ -z $("${psql[@]}" -c "select 1 from pg_database where datname = '$PG_DB'" postgres) ]]; then
        "${psql[@]}" -c "create database $PG_DB" postgres
    fi
    log "PostgreSQL ready: $PG_HOST:$PG_PORT/$PG_DB"
}

pg_stop() {
    local bin
    bin=$(pg_bindir)
    if [[ -n $bin ]] && pg_running "$bin"; then
        as_pg "$bin/pg_ctl" stop -D "$PG_DATA" -m fast -w >/dev/null
        log "PostgreSQL stopped"
    else
        log "PostgreSQL not running"
    fi
}

print_env() {
    echo "export SPIKEPRUNE_TEST_POSTGRES_URL=postgresql+psycopg2://postgres@$PG_HOST:$PG_PORT/$PG_DB"
    echo "export SPIKEPRUNE_CHROMIUM=$CHROMIUM"
}

# One start/stop at a time (make and the pytest fixture may both call start). Long-lived
# children are started with 9>&- so that they do not keep the lock after we exit.
lock() { exec 9>"$PG_ROOT.lock"; flock 9; }

case ${1:-} in
    start) lock; install_missing; pg_start ;;
    stop) lock; pg_stop ;;
    env) print_env ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
