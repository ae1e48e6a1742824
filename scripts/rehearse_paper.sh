#!/usr/bin/env bash
# Dress rehearsal of the paper profile (issue 11): the real ./run_all.sh --profile paper on
# miniature, format-faithful copies of every remote file, served by a loopback mirror.
#
#   scripts/rehearse_paper.sh [NAME] [--fresh] [--quick] [-- RUN_ALL_OPTIONS...]
#
# --quick rehearses ./run_all.sh --profile paper-quick (issue 23) instead of paper: no SfM-120k,
# distractors or ImageNet; the check then also reads this run's requests in mirror.log and fails
# on any request for such a file. NAME (default "rehearsal", "quick" with --quick) names the
# work folder
#   ${REHEARSAL_ROOT:-${TMPDIR:-/tmp}}/regattn-rehearsal-NAME/
#     fixtures/   scripts/paper_fixtures.py output (reused when complete)
#     data/       the data root ($REGATTN_DATA): downloads, extractions, caches
#     results/    $REGATTN_RESULTS unless the caller sets it: tables in results/<profile>/tables
#     mirror.log  one JSON line per request the mirror served (all runs appended)
# A second run with the same NAME resumes from the data root like a user's rerun; --fresh
# deletes the work folder first. Options after -- go to run_all.sh (e.g. -- --from 05); the
# result check is skipped after --only (one notebook: a partial set of tables).
#
# Environment: REHEARSAL_ROOT (parent of the work folder), REHEARSAL_THROTTLE (mirror bytes/s)
# and REHEARSAL_THROTTLE_MATCH (regex of the paths throttled), REHEARSAL_SEED (fixture seed,
# 0), REGATTN_SHARD_IMAGES (images per extraction shard, 40 here), REGATTN_RESULTS,
# REGATTN_SKIP_SETUP=1 (skip scripts/setup_env.sh; the Python is then $REGATTN_PYTHON,
# default .venv/bin/python).
# Exits non-zero when run_all.sh fails or the tables miss anything the paper has
# (scripts/check_paper_results.py).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
name="" fresh=0 run_all_args=() profile=paper
while [ $# -gt 0 ]; do
  case "$1" in
    --fresh) fresh=1; shift ;;
    --quick) profile=paper-quick; shift ;;
    --) shift; run_all_args=("$@"); break ;;
    -h|--help) sed -n 2,28p "$0"; exit 0 ;;
    -*) echo "rehearse_paper.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) name=$1; shift ;;
  esac
done
[ -n "$name" ] || { [ "$profile" = paper ] && name=rehearsal || name=quick; }
case "$name" in *[!A-Za-z0-9._-]*|"") echo "rehearse_paper.sh: bad NAME '$name'" >&2; exit 2 ;; esac

work=${REHEARSAL_ROOT:-${TMPDIR:-/tmp}}/regattn-rehearsal-$name
[ "$fresh" = 1 ] && rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd)
say() { echo "[rehearsal] $*"; }

if [ "${REGATTN_SKIP_SETUP:-0}" = 1 ]; then
  PY=${REGATTN_PYTHON:-$repo/.venv/bin/python}
else
  scripts/setup_env.sh
  PY=$repo/.venv/bin/python
fi
# run_all.sh uses the same interpreter and need not set up again
export REGATTN_SKIP_SETUP=1 REGATTN_PYTHON=$PY
# this checkout's library, whatever the venv has installed
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} MPLBACKEND=Agg PYTHONUNBUFFERED=1

say "work folder $work"
"$PY" scripts/paper_fixtures.py "$work/fixtures" --seed "${REHEARSAL_SEED:-0}"
fixtures=$work/fixtures
# a data root made from other fixtures would fail their checksums: start it over
stamp=$(cat "$fixtures/.complete")
if [ -f "$work/fixtures.stamp" ] && [ "$(cat "$work/fixtures.stamp")" != "$stamp" ]; then
  say "the fixtures changed: new data root and results"
  rm -rf "$work/data" "$work/results"
fi
echo "$stamp" > "$work/fixtures.stamp"

# the loopback mirror, stopped whatever happens next
rm -f "$work/mirror.port"
mirror_args=(--port 0 --port-file "$work/mirror.port" --log "$work/mirror.log")
[ -n "${REHEARSAL_THROTTLE:-}" ] && mirror_args+=(--throttle "$REHEARSAL_THROTTLE")
[ -n "${REHEARSAL_THROTTLE_MATCH:-}" ] && mirror_args+=(--throttle-match "$REHEARSAL_THROTTLE_MATCH")
"$PY" scripts/loopback_mirror.py "$fixtures/mirror" "${mirror_args[@]}" > "$work/mirror.out" 2>&1 &
mirror_pid=$!
stop_mirror() {
  if kill -0 "$mirror_pid" 2>/dev/null; then
    kill -TERM "$mirror_pid" 2>/dev/null || true
    wait "$mirror_pid" 2>/dev/null || true
  fi
}
trap stop_mirror EXIT
trap 'stop_mirror; exit 130' INT
trap 'stop_mirror; exit 143' TERM
for _ in $(seq 100); do
  [ -s "$work/mirror.port" ] && break
  kill -0 "$mirror_pid" 2>/dev/null || { cat "$work/mirror.out" >&2; say "the mirror did not start" >&2; exit 1; }
  sleep 0.1
done
[ -s "$work/mirror.port" ] || { say "the mirror wrote no port within 10 s" >&2; exit 1; }
port=$(cat "$work/mirror.port")
say "mirror http://127.0.0.1:$port serving $fixtures/mirror (pid $mirror_pid)"

export REGATTN_MIRROR=http://127.0.0.1:$port
export REGATTN_MANIFEST=$fixtures/manifest_override.json
export REGATTN_DATA=$work/data
export REGATTN_RESULTS=${REGATTN_RESULTS:-$work/results}
export REGATTN_IMPORT_FROM=  # nothing comes from a local copy: everything through the mirror
# resumable extraction in shards of 40 images (default 500), so that the 240 distractors and
# the 48 whitening images make several: a size, like the overrides
export REGATTN_SHARD_IMAGES=${REGATTN_SHARD_IMAGES:-40}
mkdir -p "$REGATTN_DATA/train"
# ImageNet is never downloaded: the user puts it in the data root, as here (paper-quick: unused)
if [ "$profile" = paper ] && [ ! -d "$REGATTN_DATA/train/imagenet" ]; then
  rm -rf "$REGATTN_DATA/train/imagenet.tmp"
  cp -r "$fixtures/local/train/imagenet" "$REGATTN_DATA/train/imagenet.tmp"
  mv "$REGATTN_DATA/train/imagenet.tmp" "$REGATTN_DATA/train/imagenet"
fi

start=$(date +%s)
status=0
log_from=$( [ -f "$work/mirror.log" ] && wc -l < "$work/mirror.log" || echo 0 )
say "./run_all.sh --profile $profile --device cpu --overrides $fixtures/overrides.yaml ${run_all_args[*]}"
./run_all.sh --profile "$profile" --device cpu --overrides "$fixtures/overrides.yaml" "${run_all_args[@]}" || status=$?
say "run_all.sh exited $status after $(( $(date +%s) - start )) s"
stop_mirror
[ "$status" -eq 0 ] || exit "$status"

partial=0
for a in "${run_all_args[@]}"; do [ "$a" = --only ] && partial=1; done
if [ "$partial" = 1 ]; then
  say "partial series (${run_all_args[*]}): result check skipped"
  exit 0
fi
check_args=(--profile "$profile")
[ "$profile" = paper ] || check_args+=(--mirror-log "$work/mirror.log" --mirror-log-from "$log_from")
"$PY" scripts/check_paper_results.py "$REGATTN_RESULTS/$profile" --expected "$fixtures/expected.json" "${check_args[@]}"
