#!/usr/bin/env bash
# Runs every flagguard test: unit, property, golden and integration tests, including the ones
# driving the real OpenTelemetry Python and Node SDKs. Sets up what it needs first (a Python
# virtualenv and the Node packages, pinned; Debian's Chromium for the dashboard test) — see
# scripts/setup-test-clients.sh and scripts/setup-browser.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-test-clients.sh
scripts/setup-browser.sh
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --locked --all-targets 2>&1 | tee "$log"
# One closing line over every test binary (the last binary is the criterion bench in test mode).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
