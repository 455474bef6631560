#!/usr/bin/env bash
# Set up flagguard's traffic-generating test clients (see tests/clients/README.md).
#
#   Python: venv at target/test-clients/venv with tests/clients/python/requirements.txt
#   Node:   tests/clients/node/node_modules via `npm ci` from the committed package-lock.json
#
# Idempotent and fast when already set up: each side keeps a stamp holding the hash of its
# lock file (plus the interpreter version) and is only reinstalled when that changes.
# Needs python3 (with pip) and node/npm on PATH; reaches PyPI and the npm registry.
# Set FLAGGUARD_SKIP_NODE=1 or FLAGGUARD_SKIP_PYTHON=1 to set up one side only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLIENTS="$ROOT/tests/clients"
OUT="$ROOT/target/test-clients"
VENV="$OUT/venv"
REQ="$CLIENTS/python/requirements.txt"
NODE_DIR="$CLIENTS/node"
PY_STAMP="$VENV/.flagguard-requirements.sha256"
NODE_STAMP="$NODE_DIR/node_modules/.flagguard-lock.sha256"

log() { printf 'setup-test-clients: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
hash_of() { # hash of the given files' contents plus any extra words
  local f
  { for f in "$@"; do [ -f "$f" ] && cat "$f" || printf '%s\n' "$f"; done; } | sha256sum | cut -d' ' -f1
}

mkdir -p "$OUT"
# Serialize concurrent runs (e.g. two test processes starting at once).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$OUT/.setup.lock"
  flock 9
fi

# ---------------------------------------------------------------------------------- Python
setup_python() {
  command -v python3 >/dev/null 2>&1 || die "python3 not found on PATH"
  local pyver want have
  pyver="$(python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
  want="$(hash_of "$REQ" "python-$pyver")"
  have="$(cat "$PY_STAMP" 2>/dev/null || true)"
  if [ "$want" = "$have" ] && [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    log "python venv up to date ($VENV)"
    return
  fi
  log "creating python venv at $VENV (python $pyver)"
  rm -rf "$VENV"
  local pip=("$VENV/bin/python" -m pip)
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 without python3-venv has no ensurepip: make a bare venv and drive the
    # system pip into it (pip >= 22.3 understands --python).
    log "python3 -m venv failed (no ensurepip?); retrying with --without-pip"
    rm -rf "$VENV"
    python3 -m venv --without-pip "$VENV"
    pip=(python3 -m pip --python "$VENV/bin/python")
  fi
  log "installing $(grep -cE '^[A-Za-z0-9]' "$REQ") pinned packages from ${REQ#"$ROOT"/}"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "${pip[@]}" install --quiet --no-input -r "$REQ"
  "${pip[@]}" check >/dev/null || { "${pip[@]}" check >&2; die "pip check failed"; }
  "$VENV/bin/python" -c 'import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc.trace_exporter, opentelemetry.exporter.otlp.proto.http.trace_exporter, openfeature.contrib.hook.opentelemetry, UnleashClient, openfeature.contrib.provider.unleash' \
    || die "python packages installed but not importable"
  printf '%s\n' "$want" > "$PY_STAMP"
}

# ------------------------------------------------------------------------------------ Node
setup_node() {
  command -v node >/dev/null 2>&1 || die "node not found on PATH"
  command -v npm >/dev/null 2>&1 || die "npm not found on PATH"
  [ -f "$NODE_DIR/package-lock.json" ] || die "missing $NODE_DIR/package-lock.json"
  local want have
  want="$(hash_of "$NODE_DIR/package.json" "$NODE_DIR/package-lock.json" "node-$(node --version)")"
  have="$(cat "$NODE_STAMP" 2>/dev/null || true)"
  if [ "$want" = "$have" ] && [ -d "$NODE_DIR/node_modules/@openfeature/open-telemetry-hooks" ]; then
    log "node_modules up to date ($NODE_DIR/node_modules)"
    return
  fi
  log "npm ci in ${NODE_DIR#"$ROOT"/} (node $(node --version), npm $(npm --version))"
  # --ignore-scripts: nothing here needs an install script (protobufjs' postinstall is only a
  # version check), and skipping them keeps the install the same on every npm version.
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2)
  printf '%s\n' "$want" > "$NODE_STAMP"
}

[ "${FLAGGUARD_SKIP_PYTHON:-0}" = 1 ] || setup_python
[ "${FLAGGUARD_SKIP_NODE:-0}" = 1 ] || setup_node

cat <<EOF
python:  $VENV/bin/python
         $VENV/bin/python $CLIENTS/python/traffic.py --endpoint http://127.0.0.1:4317 --protocol grpc --scenario regression --flag FLAGKEY
         $VENV/bin/python $CLIENTS/python/unleash_traffic.py --endpoint http://127.0.0.1:4317 --protocol grpc --unleash-url URL --unleash-token TOKEN --flag FLAGKEY --duration 10
node:    $NODE_DIR/node_modules
         node $NODE_DIR/traffic.mjs --endpoint http://127.0.0.1:4318 --hook event --scenario regression --flag FLAGKEY
EOF
