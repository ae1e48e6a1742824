#!/usr/bin/env bash
# Run the notebook series end to end with papermill.
#   ./run_all.sh [--profile smoke|demo|paper-quick|paper] [--device auto|cpu|cuda] [--from NN] [--only NN]
#                [--overrides FILE.yaml]
# Executed notebooks go to results/<profile>/notebooks/, tables and figures beside them; the run
# manifest (commit, profile, overrides, seeds, machine, each notebook's wall time) goes to
# results/<profile>/run.json and the run's page to results/<profile>/REPORT.md (also after a failure).
# Stops at the first failing notebook, naming it and its failing cell; earlier results stay,
# and --from NN resumes there. --overrides: a YAML mapping of profile fields (nested allowed,
# e.g. "train: {recipe: {iterations: 4}}") handed to every notebook's `overrides` parameter.
# REGATTN_SKIP_SETUP=1 uses the existing .venv (or $REGATTN_PYTHON) without installing anything.
set -euo pipefail
cd "$(dirname "$0")"
profile=demo device=auto from=01 only="" overrides=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --from) from=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --overrides) overrides=$2; shift 2 ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$profile" in smoke|demo|paper-quick|paper) ;; *) echo "run_all.sh: unknown profile '$profile' (smoke, demo, paper-quick, paper)" >&2; exit 2 ;; esac
if [ "${REGATTN_SKIP_SETUP:-0}" = 1 ]; then
  PY=${REGATTN_PYTHON:-.venv/bin/python}
  command -v "$PY" >/dev/null || { echo "run_all.sh: REGATTN_SKIP_SETUP=1 but no Python at $PY" >&2; exit 2; }
else
  scripts/setup_env.sh
  PY=.venv/bin/python
fi
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
params=()
if [ -n "$overrides" ]; then
  [ -f "$overrides" ] || { echo "run_all.sh: overrides file '$overrides' not found" >&2; exit 2; }
  # Checked against the profile now (a typo fails here, not hours later), then wrapped as the
  # notebooks' `overrides` parameter in a papermill parameters file.
  params_file=$(mktemp "${TMPDIR:-/tmp}/regattn-params.XXXXXX.yaml")
  trap 'rm -f "$params_file"' EXIT
  $PY -m regattn_lib.experiments.profiles --profile "$profile" --overrides "$overrides" --papermill-params "$params_file" || exit 2
  params=(-f "$params_file")
fi
# Before any notebook: the device for every profile (--device cuda without a usable GPU stops
# here with one line); profiles that download also check each file, the disk and memory.
$PY -m regattn_lib.experiments.preflight --profile "$profile" --device "$device" ${overrides:+--overrides "$overrides"}
# results where the library puts them (runtime.paths.results_root: $REGATTN_RESULTS, else beside
# the data root), named here for the notebooks and the manifest
run_name=$($PY -m regattn_lib.experiments.profiles --profile "$profile" ${overrides:+--overrides "$overrides"} --run-name) || exit 2
results=$($PY -c "from regattn_lib.runtime.paths import results_root; print(results_root('$run_name'))")
export REGATTN_RESULTS=${results%/*}
mkdir -p "$results/notebooks"
manifest() { $PY -m regattn_lib.experiments.run_manifest "$@"; }
run_id=$(manifest begin --results "$results" --profile "$profile" --device "$device" \
  --overrides "$overrides" --from "$from" --only "$only")
status=0
for nb in notebooks/[0-9][0-9]_*.ipynb; do
  name=$(basename "$nb" .ipynb); num=${name:0:2}
  if [ -n "$only" ] && [ "$num" != "$only" ]; then continue; fi
  if [ -z "$only" ] && [ "$num" \< "$from" ]; then continue; fi
  out="$results/notebooks/$name.ipynb"
  start=$(date +%s)
  start_ns=$(date +%s.%N)
  if $PY -m papermill "$nb" "$out" -p profile "$profile" -p device "$device" "${params[@]}" \
      --cwd notebooks --log-level WARNING > "$results/notebooks/$name.log" 2>&1; then
    echo "[run_all] $name ok ($(( $(date +%s) - start )) s)"
    manifest notebook --results "$results" --run "$run_id" --name "$name" --status ok \
      --started "$start_ns" --wall-s "$(( $(date +%s) - start ))"
  else
    manifest notebook --results "$results" --run "$run_id" --name "$name" --status failed \
      --started "$start_ns" --wall-s "$(( $(date +%s) - start ))" || true
    cell=$(grep -o "Exception was encountered at 'In \[[0-9]*\]'" "$results/notebooks/$name.log" | head -1 || true)
    echo "[run_all] $name FAILED after $(( $(date +%s) - start )) s ${cell:+($cell)}" >&2
    grep -E "Error|error" "$results/notebooks/$name.log" | tail -5 >&2 || true
    echo "[run_all] log: $results/notebooks/$name.log; executed notebook: $out; resume with --from $num" >&2
    status=1
    break
  fi
done
manifest finish --results "$results" --run "$run_id" --status "$([ $status -eq 0 ] && echo ok || echo failed)" >/dev/null
$PY -m regattn_lib.experiments.report_page "$results" >/dev/null || { echo "[run_all] writing $results/REPORT.md failed" >&2; status=1; }
[ $status -eq 0 ] && echo "[run_all] done: report in $results/REPORT.md, tables in $results/tables, figures in $results/figures"
exit $status
