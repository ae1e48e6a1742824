#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the browser test (tests/test_browser.py).
# Idempotent: does nothing when /usr/bin/chromium exists. Installs only as root with apt-get
# (quiet, non-interactive); otherwise says why and exits 0 so the test can skip with a reason.
# Playwright drives this system Chromium; `playwright install` (a browser download) is never run.
set -euo pipefail
CHROMIUM=${REGATTN_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "[install_browser] $CHROMIUM is missing and we are not root: not installing chromium" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[install_browser] $CHROMIUM is missing and there is no apt-get: not installing chromium" >&2
  exit 0
fi
echo "[install_browser] installing Debian's chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
log=${TMPDIR:-/tmp}/regattn-install-browser.log
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } >"$log" 2>&1; then
  tail -20 "$log" >&2
  echo "[install_browser] apt-get failed (log: $log); the browser test will skip" >&2
  exit 0
fi
echo "[install_browser] ready: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
