#!/usr/bin/env bash
# Runs every flagguard test: unit, property, golden and integration tests, including the ones
# driving the real OpenTelemetry Python and Node SDKs. Sets up what it needs first (a Python
# virtualenv and the Node packages, pinned; Debian's Chromium for the dashboard test; a real
# Unleash 8.2.0 with PostgreSQL for the Unleash actuator; a second, private PostgreSQL for the
# cluster-mode tests) — see scripts/setup-test-clients.sh, scripts/setup-browser.sh,
# scripts/setup-unleash.sh and scripts/setup-postgres.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-test-clients.sh
scripts/setup-browser.sh
log="$(mktemp)"
trap 'rm -f "$log"; scripts/setup-unleash.sh stop >/dev/null 2>&1 || true; scripts/setup-postgres.sh stop >/dev/null 2>&1 || true' EXIT
# Started once for the whole run (the tests reuse it; each test uses its own flag keys).
scripts/setup-unleash.sh start >/dev/null
# The cluster tests' PostgreSQL (each test creates its own database in it; the outage test
# starts a cluster of its own, so that crashing it disturbs no other test).
pg_env="$(scripts/setup-postgres.sh start)"
export "${pg_env?}"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets 2>&1 | tee "$log"
# One closing line over every test binary (the last binary is the criterion bench in test mode).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
