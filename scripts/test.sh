#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this script).
#
#   scripts/test.sh
#
# Stages, in order (each timed; the table is printed at the end, also after a failure):
# 1. fmt, clippy: formatting and lints (cargo fmt --check, clippy -D warnings);
#    light build: the same lints on the build without the `gcp` feature (README's first
#    command builds it), so it keeps compiling cleanly;
# 2. tests: every test on the embedded default (SQLite + in-process bus);
# 3. emulator suite: scripts/emulators.sh creates the venv, starts Google's Pub/Sub emulator
#    and bqemulator on free ports, and always stops them:
#    - the shared behavioural suite (gate, cascade, backfill) again, on BigQuery;
#    - end to end: one worker process per phase behind Pub/Sub push subscriptions;
# 4. terraform checks: structure and schema checks (python-hcl2) and checkov.
# Then: no emulator process group this script started may still be running (exit 1 if one
# is; it is killed and named).
# Set PHASEGATE_SKIP_EMULATORS=1 to skip stage 3 locally.
set -euo pipefail
cd "$(dirname "$0")/.."

# Process groups started by scripts/emulators.sh, one id a line (checked at exit).
PGIDS_FILE=$(mktemp "${TMPDIR:-/tmp}/phasegate-test-pgids.XXXXXX")
export PHASEGATE_EMULATOR_PGIDS="$PGIDS_FILE"

STAGE_NAMES=()
STAGE_TIMES=()
STAGE_RESULTS=()
CURRENT=
started=$EPOCHREALTIME

elapsed() { # START -> seconds since START, one decimal
  awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}

record() { # NAME SECONDS RESULT
  STAGE_NAMES+=("$1")
  STAGE_TIMES+=("$2")
  STAGE_RESULTS+=("$3")
}

stage() { # NAME COMMAND... — run COMMAND as one timed stage; a failure ends the run
  local name=$1 t0=$EPOCHREALTIME
  shift
  echo "== $name"
  CURRENT=$name
  "$@"
  CURRENT=
  record "$name" "$(elapsed "$t0")" ok
}

skip() { # NAME REASON
  record "$1" - "skipped ($2)"
}

print_times() {
  echo
  printf '%-18s %9s  %s\n' stage seconds result
  local i
  for i in "${!STAGE_NAMES[@]}"; do
    printf '%-18s %9s  %s\n' "${STAGE_NAMES[$i]}" "${STAGE_TIMES[$i]}" "${STAGE_RESULTS[$i]}"
  done
  printf '%-18s %9s\n' total "$(elapsed "$started")"
}

# Every emulator group started during this run must be gone: a leftover is killed, named,
# and fails the run.
check_no_emulators() {
  local pgid leaked=0
  while read -r pgid; do
    [[ -n "$pgid" ]] || continue
    if kill -0 -- "-$pgid" 2>/dev/null; then
      echo "LEAK: emulator process group $pgid is still running after the suite:" >&2
      ps -o pid=,args= -g "$pgid" >&2 || true
      kill -KILL -- "-$pgid" 2>/dev/null || true
      leaked=1
    fi
  done <"$PGIDS_FILE"
  rm -f "$PGIDS_FILE"
  return "$leaked"
}

finish() {
  local rc=$?
  [[ -n "$CURRENT" ]] && record "$CURRENT" - "FAILED (exit $rc)"
  print_times
  if ! check_no_emulators; then
    echo "== FAILED: scripts/emulators.sh left an emulator running (killed now)" >&2
    rc=1
  fi
  if ((rc == 0)); then
    echo "== all checks passed"
  fi
  exit "$rc"
}
trap finish EXIT

emulator_suite() {
  scripts/emulators.sh bash -c '
    set -euo pipefail
    export PHASEGATE_TEST_BACKEND=bigquery
    cargo test --locked --test it -- gate:: gate_truth:: cascade:: lineage:: backfill:: exactly_once::
    cargo test --locked --test it -- --nocapture bigquery_jobs::
    cargo test --locked --test it -- --ignored e2e_emulators::
  '
}

stage fmt cargo fmt --all -- --check
stage clippy cargo clippy --all-targets --locked -- -D warnings
stage "light build" cargo clippy --no-default-features --all-targets --locked -- -D warnings
stage tests cargo test --locked
if [[ "${PHASEGATE_SKIP_EMULATORS:-0}" != 1 ]]; then
  stage "emulator suite" emulator_suite
else
  skip "emulator suite" PHASEGATE_SKIP_EMULATORS=1
fi
if [[ -d terraform ]]; then
  stage "terraform checks" scripts/check-terraform.sh
else
  skip "terraform checks" "no terraform/"
fi
