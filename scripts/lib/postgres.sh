# Shared pieces of the private PostgreSQL clusters the test scripts start (sourced by
# scripts/setup-unleash.sh and scripts/setup-postgres.sh; not run on its own).
#
# The caller sets PG_DATA (cluster directory), PG_LOG (server log) and OUT (its state directory)
# and defines log() and die(). Functions set BINDIR (the versioned PostgreSQL binaries) and
# PG_PORT. Needs root: initdb and the server run as `postgres` through runuser.

port_in_use() { # something accepts TCP connections on 127.0.0.1:$1
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A port nobody listens on, below Linux's default ephemeral range (32768-60999) so outgoing
# connections cannot be holding it either. Callers still retry if they lose a race for it.
free_port() {
  local p _
  for _ in $(seq 1 200); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    if ! port_in_use "$p" && ! { command -v ss >/dev/null 2>&1 && ss -Htan "( sport = :$p )" 2>/dev/null | grep -q .; }; then
      echo "$p"
      return 0
    fi
  done
  die "no free TCP port found"
}

pg_bindir() { # directory of the versioned PostgreSQL binaries, empty if not installed
  local f
  f="$(dpkg -L postgresql-15 2>/dev/null | grep '/bin/initdb$' | head -n1 || true)"
  if [ -z "$f" ]; then
    f="$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n1)"
  fi
  [ -n "$f" ] && [ -x "$f" ] && dirname "$f"
  return 0
}

install_postgres() {
  if [ -n "$(pg_bindir)" ]; then
    return
  fi
  [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and we are not root to apt-get it"
  log "installing PostgreSQL (apt-get install postgresql)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends postgresql >&2; then
    apt-get update >&2
    apt-get install -y --no-install-recommends postgresql >&2
  fi
  [ -n "$(pg_bindir)" ] || die "PostgreSQL installed but no .../bin/initdb found"
}

as_pg() { (cd / && runuser -u postgres -- "$@"); } # cd /: our cwd may be unreadable to postgres

pg_running() {
  [ -f "$PG_DATA/postmaster.pid" ] && as_pg "$BINDIR/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

psql_pg() { # psql as postgres to the private cluster's maintenance database
  as_pg "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"
}

# Creates the cluster in $PG_DATA unless it exists: trust auth on loopback, no Unix socket,
# no durability (throw-away test data). $1: the name of the calling script, for the config.
init_cluster() {
  BINDIR="$(pg_bindir)"
  [ -n "$BINDIR" ] || die "PostgreSQL binaries not found"
  if [ -f "$PG_DATA/PG_VERSION" ]; then
    # A tree copied by root (a new work tree from an old one) leaves the data owned by root.
    if [ "$(stat -c %U "$PG_DATA")" != postgres ]; then
      log "chown -R postgres $PG_DATA (the cluster data is not owned by postgres)"
      chown -R postgres: "$PG_DATA"
    fi
    return
  fi
  log "initdb $PG_DATA"
  rm -rf "$PG_DATA"
  mkdir -p "$PG_DATA"
  chown postgres: "$PG_DATA"
  chmod 700 "$PG_DATA"
  # The cluster lives in the work tree: `postgres` must be able to reach it.
  local d="$OUT"
  while [ "$d" != / ]; do
    if ! as_pg test -x "$d"; then
      log "chmod o+x $d (PostgreSQL runs as postgres and must reach $PG_DATA)"
      chmod o+x "$d"
    fi
    d="$(dirname "$d")"
  done
  as_pg "$BINDIR/initdb" -D "$PG_DATA" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null
  cat >> "$PG_DATA/postgresql.conf" <<CONF

# flagguard test cluster ($1)
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = ${PG_SYNCHRONOUS_COMMIT:-off}
full_page_writes = off
max_connections = 100
CONF
}

# Starts the server on $1 (a port), or on a free port when $1 is empty; sets PG_PORT. 0 when
# it runs, 1 when it did not start (the log tail is shown).
launch_postgres() {
  local want="$1"
  rm -f "$PG_DATA/postmaster.pid"
  touch "$PG_LOG"
  chown postgres: "$PG_LOG"
  PG_PORT="${want:-$(free_port)}"
  # 9>&-: the server must not inherit (and keep holding) our lock.
  if as_pg "$BINDIR/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 -o "-p $PG_PORT" start >/dev/null 2>&1 9>&-; then
    return 0
  fi
  log "PostgreSQL did not start on port $PG_PORT; log tail:"
  tail -n 5 "$PG_LOG" >&2 || true
  return 1
}
