#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver for the dashboard's end-to-end test, if missing.
# Needs root (CI runs as root) and Debian's package mirrors. Idempotent.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "setup-browser: chromium and chromedriver present" >&2
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup-browser: chromium/chromedriver missing; install Debian's chromium and chromium-driver (as root)" >&2
  exit 1
fi
echo "setup-browser: installing chromium and chromium-driver" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
command -v chromium && command -v chromedriver
