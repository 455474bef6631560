#!/usr/bin/env bash
# Soak test (docs/performance.md, "Soak"): the real daemon under mixed traffic for an hour —
# healthy background load, a regression of a new flag every 30 s (each must be killed), the
# rule file rewritten every 20 s (hot reload) — with its RSS sampled every minute.
#
#   scripts/soak.sh [DURATION, default 1h] [BACKGROUND_RPS, default 20]
#
# Prints one JSON line per sample and a summary; exits 1 if a regression was not killed or the
# daemon died. Not part of the test suite (it takes the whole duration).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DURATION="${1:-1h}"
RATE="${2:-20}"
cargo build --release --locked --bins >&2
exec target/release/flagguard-load soak --flagguard target/release/flagguard --duration "$DURATION" --rate "$RATE"
