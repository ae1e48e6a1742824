#!/usr/bin/env bash
# Create or update .venv with the project and its notebook/dev extras. Idempotent: a stamp
# holding the hash of pyproject.toml skips the install when nothing changed.
# torch is installed first with an exact pin so that pip takes the local/CPU-capable wheel
# instead of resolving a newer multi-GB build; override with REGATTN_TORCH_SPEC.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${REGATTN_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.regattn-stamp
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] installing torch ($TORCH_SPEC) and the project into .venv"
log=.venv/setup.log
: > "$log"
# torch's Linux wheel pulls about 6 GB of CUDA libraries: say so up front rather than fail
# half-way with "No space left on device" (REGATTN_MIN_FREE_GB=0 skips the check)
need_gb=${REGATTN_MIN_FREE_GB:-8}
if ! .venv/bin/python -c "import torch" 2>/dev/null && [ "$need_gb" -gt 0 ]; then
  for dir in .venv "${TMPDIR:-/tmp}"; do
    free_gb=$(df -Pk "$dir" | awk 'NR==2 {print int($4 / 1048576)}')
    if [ "$free_gb" -lt "$need_gb" ]; then
      echo "[setup] only ${free_gb} GB free on the disk of $dir ($(df -P "$dir" | awk 'NR==2 {print $6}')); installing torch needs about ${need_gb} GB (REGATTN_MIN_FREE_GB): free some space and rerun" >&2
      exit 1
    fi
  done
fi
# no wheel cache: the multi-GB wheels would otherwise be kept twice on disk
pip_install() { .venv/bin/python -m pip install -q --no-cache-dir "$@" >>"$log" 2>&1; }
pip_install --upgrade pip || true
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  # shellcheck disable=SC2086
  pip_install $TORCH_SPEC || { tail -20 "$log" >&2; echo "[setup] torch install failed ($TORCH_SPEC), log: $log" >&2; exit 1; }
fi
pip_install -e ".[notebooks,dev]" || { tail -20 "$log" >&2; echo "[setup] project install failed, log: $log" >&2; exit 1; }
.venv/bin/python -c "import regattn_lib, torch, papermill, efficientnet_lite_pytorch" \
  || { echo "[setup] the environment is incomplete, log: $log" >&2; exit 1; }
echo "$want" > "$stamp"
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null 2>&1 || true
echo "[setup] ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
