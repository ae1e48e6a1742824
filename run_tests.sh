#!/usr/bin/env bash
# The test command: sets up .venv if needed, runs the unit tests, then the notebook series on
# the smoke profile (papermill, CPU) with its result checks. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
scripts/install_browser.sh  # Debian's chromium for tests/test_browser.py (root + apt only)
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
