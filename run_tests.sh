#!/usr/bin/env bash
# The test command: sets up .venv if needed, checks lint and format (ruff), runs the unit tests,
# then the notebook series on the smoke profile (papermill, CPU) with its result checks and the
# paper profile's dress rehearsal. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
scripts/install_browser.sh  # Debian's chromium for tests/test_browser.py (root + apt only)
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
# lint and format are part of the tests (notebooks and Markdown excluded in pyproject.toml)
.venv/bin/ruff check . && .venv/bin/ruff format --check . \
  || { echo "run_tests.sh: ruff found problems (fix with: .venv/bin/ruff check --fix . && .venv/bin/ruff format .)" >&2; exit 1; }
# two workers (the 2 cores), a test file on one worker, the longest files first (tests/conftest.py);
# one torch/OpenMP thread each, since two workers of two threads on two cores spin against each
# other (a smoke notebook took minutes instead of seconds)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder "$@"
