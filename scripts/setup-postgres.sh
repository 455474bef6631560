#!/usr/bin/env bash
# Private PostgreSQL 15 clusters on loopback for flagguard's cluster-mode tests
# (tests/it/cluster/), separate from the one scripts/setup-unleash.sh runs, so that crashing or
# restarting one disturbs nothing else.
#
#   scripts/setup-postgres.sh start [NAME]              start (or reuse) the cluster NAME (default
#                                                       `main`) and print FLAGGUARD_TEST_PG_URL=…
#   scripts/setup-postgres.sh stop [NAME]               stop NAME (default: every cluster) and delete
#                                                       its data
#   scripts/setup-postgres.sh restart-immediate [NAME]  pg_ctl restart -m immediate (crash recovery,
#                                                       same port)
#   scripts/setup-postgres.sh stop-immediate [NAME]     pg_ctl stop -m immediate, keeping the data and
#                                                       the port: a later `start` comes back on it
#   scripts/setup-postgres.sh env [NAME]                print the URL of the running cluster (exit 1
#                                                       if none)
#
# The URL is postgres://postgres@127.0.0.1:PORT/postgres (trust authentication on loopback;
# tests create a database of their own in it). State lives under target/cluster-pg/NAME/: pg/
# (cluster data, owned by `postgres`), pg.log, pg.port. Invocations are serialized with flock;
# a server never inherits the lock, nor any other descriptor the caller passed us (such as a
# build lock held by `flock … cargo test`).
#
# Needs root (apt-get when PostgreSQL is missing, runuser), bash, flock and runuser.
set -euo pipefail

# Close every inherited descriptor above stderr: a server started from here would otherwise
# keep it open (and hold a caller's lock) for as long as it runs.
for fd in $(ls /proc/$$/fd); do
  if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="$ROOT/target/cluster-pg"

log() { printf 'setup-postgres: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

. "$ROOT/scripts/lib/postgres.sh"

select_instance() { # $1 = NAME; sets the paths the shared functions use
  case "$1" in
    ''|*[!a-z0-9_-]*) die "bad cluster name '$1' (a-z, 0-9, _ and - only)" ;;
  esac
  OUT="$BASE/$1"
  PG_DATA="$OUT/pg"
  PG_LOG="$OUT/pg.log"
  PG_PORT_FILE="$OUT/pg.port"
  mkdir -p "$OUT"
}

url() { printf 'FLAGGUARD_TEST_PG_URL=postgres://postgres@127.0.0.1:%s/postgres\n' "$PG_PORT"; }

answering() { # the running server takes queries on the recorded port
  PG_PORT="$(cat "$PG_PORT_FILE" 2>/dev/null || true)"
  [ -n "$PG_PORT" ] && pg_running && psql_pg -c 'SELECT 1' >/dev/null 2>&1
}

do_start() {
  install_postgres
  # A crashed server (`restart-immediate`) must keep every commit it acknowledged, as a real
  # one does: with synchronous_commit off, the last ones would be lost and the tests would see
  # a decided kill vanish. (fsync stays off: a process crash keeps the OS's page cache.)
  PG_SYNCHRONOUS_COMMIT=on init_cluster setup-postgres.sh
  if answering; then
    url
    return
  fi
  if pg_running; then
    log "PostgreSQL in $PG_DATA runs but does not answer; restarting it"
    as_pg "$BINDIR/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  # Back on the recorded port if it is still free: clients of a crashed server reconnect to it.
  local previous attempt
  previous="$(cat "$PG_PORT_FILE" 2>/dev/null || true)"
  if [ -n "$previous" ] && ! port_in_use "$previous" && launch_postgres "$previous"; then
    printf '%s\n' "$PG_PORT" > "$PG_PORT_FILE"
    url
    return
  fi
  for attempt in 1 2 3 4 5; do
    if launch_postgres ""; then
      printf '%s\n' "$PG_PORT" > "$PG_PORT_FILE"
      log "PostgreSQL ${1:-main} on 127.0.0.1:$PG_PORT"
      url
      return
    fi
    log "(attempt $attempt)"
  done
  die "could not start PostgreSQL (log: $PG_LOG)"
}

do_stop() { # $1 = NAME
  select_instance "$1"
  BINDIR="$(pg_bindir)"
  if [ -n "$BINDIR" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
    log "stopping PostgreSQL $1"
    as_pg "$BINDIR/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 \
      || as_pg "$BINDIR/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$OUT"
}

do_restart_immediate() {
  BINDIR="$(pg_bindir)"
  answering || die "PostgreSQL ${1} is not running"
  # Same port: pg_ctl restart reuses the options of the previous start (postmaster.opts).
  as_pg "$BINDIR/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -m immediate -w -t 60 restart >/dev/null 2>&1 9>&- \
    || die "restart failed (log: $PG_LOG)"
  url
}

do_stop_immediate() {
  BINDIR="$(pg_bindir)"
  pg_running || die "PostgreSQL ${1} is not running"
  as_pg "$BINDIR/pg_ctl" -D "$PG_DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || die "stop failed (log: $PG_LOG)"
}

command="${1:-}"
name="${2:-}"
mkdir -p "$BASE"
exec 9>"$BASE/.lock"
flock 9

case "$command" in
  start) select_instance "${name:-main}"; do_start "${name:-main}" ;;
  stop)
    if [ -n "$name" ]; then
      do_stop "$name"
    else
      for dir in "$BASE"/*/; do
        [ -d "$dir" ] && do_stop "$(basename "$dir")"
      done
    fi
    ;;
  restart-immediate) select_instance "${name:-main}"; do_restart_immediate "${name:-main}" ;;
  stop-immediate) select_instance "${name:-main}"; do_stop_immediate "${name:-main}" ;;
  env) select_instance "${name:-main}"; BINDIR="$(pg_bindir)"; answering || die "no PostgreSQL ${name:-main} running"; url ;;
  *) usage ;;
esac
