#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this script).
#
#   scripts/test.sh
#
# Stages, in order (each timed; the table is printed at the end, also after a failure):
# 1. fmt; module cycles (scripts/check-module-cycles.py: no import cycle between sibling
#    modules of src/, and its self-test that a cycle fails it); clippy + build: the lints (clippy -D warnings on every target) and the build of
#    every test in one compilation. clippy-driver is the workspace's compiler wrapper, exactly
#    as `cargo clippy` sets it up, but cargo builds instead of only checking: the dependencies
#    are compiled once, not once as check metadata for clippy and again for the tests. (If
#    clippy-driver is missing or a probe shows it would not deny warnings this way: a plain
#    `cargo clippy` stage, and the tests stage builds.)
# 2. tests: every test on the embedded default (SQLite + in-process bus); meanwhile, in the
#    background: light build, the same lints on the build without the `gcp` feature (README's
#    first command builds it), so it keeps compiling cleanly; the stage after the tests waits
#    for whatever is left of it;
# 3. emulator suite: scripts/emulators.sh starts Google's Pub/Sub and Firestore emulators and
#    two bqemulators on free ports, and always stops them. A bqemulator is one Python process
#    and the suite's bottleneck, so the BigQuery run is two shards at once, one per bqemulator:
#    - the shared behavioural suite (gate, cascade, backfill, …) again, on BigQuery;
#    - BigQuery jobs per run; end to end: one worker process per phase behind Pub/Sub push
#      subscriptions;
# 4. terraform checks: structure and schema checks (python-hcl2) and checkov.
# The Python venvs (.venv for bqemulator, .venv-tools for the terraform checks) are created in
# the background from the start, at the lowest CPU priority, while Rust compiles; stages 3 and
# 4 wait for theirs (a failure shows its log and fails the run). The table lists them as
# "(background)" rows with their own run time, which overlaps the stages'.
# Then: no emulator process group this script started may still be running (exit 1 if one
# is; it is killed and named).
# Set PHASEGATE_SKIP_EMULATORS=1 to skip stage 3 locally.
set -euo pipefail
cd "$(dirname "$0")/.."

# Process groups started by scripts/emulators.sh, one id a line (checked at exit).
PGIDS_FILE=$(mktemp "${TMPDIR:-/tmp}/phasegate-test-pgids.XXXXXX")
export PHASEGATE_EMULATOR_PGIDS="$PGIDS_FILE"
# Logs and run times of the background jobs.
BG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/phasegate-test-bg.XXXXXX")
declare -A BG_PID=()

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

# NAME COMMAND... — start COMMAND now, in the background, at the lowest CPU priority (it only
# takes what the Rust build leaves), in a process group of its own (stopped as a whole if the
# run ends first); output to a log, its run time to a file.
background() {
  local name=$1
  shift
  # Not a job-control shell: the background child is no group leader, so setsid makes it one
  # without forking (pid = group id). A new session is also a new scheduler autogroup where
  # the kernel has them (sched_autogroup_enabled): autogroups share the CPU fairly whatever
  # their processes' nice values, so the job lowers its autogroup's priority too.
  # shellcheck disable=SC2016 # expanded by the inner bash
  setsid nice -n 19 bash -c '{ echo 19 >/proc/self/autogroup; } 2>/dev/null || true
    t0=$EPOCHREALTIME; rc=0; "${@:2}" || rc=$?
    awk -v a="$t0" -v b="$EPOCHREALTIME" "BEGIN { printf \"%.1f\", b - a }" >"$1"; exit "$rc"' \
    background "$BG_DIR/$name.time" "$@" >"$BG_DIR/$name.log" 2>&1 </dev/null &
  BG_PID[$name]=$!
}

# NAME — wait for a background job and show its log; a failure fails the calling stage.
await_background() {
  local name=$1 rc=0
  local pid=${BG_PID[$name]}
  echo "== waiting for $name (background, log below)"
  wait "$pid" || rc=$?
  unset "BG_PID[$name]"
  sed 's/^/   | /' "$BG_DIR/$name.log"
  local seconds
  seconds=$(cat "$BG_DIR/$name.time" 2>/dev/null || echo -)
  if ((rc != 0)); then
    record "$name (background)" "$seconds" "FAILED (exit $rc)"
    echo "== $name failed (exit $rc); its log is above" >&2
    return "$rc"
  fi
  record "$name (background)" "$seconds" ok
}

stop_background() { # jobs not waited for (the run ended early): stop their whole groups
  local name
  for name in "${!BG_PID[@]}"; do
    kill -TERM -- "-${BG_PID[$name]}" 2>/dev/null || true
    record "$name (background)" - "stopped (run ended first)"
  done
  rm -rf "$BG_DIR"
}

print_times() {
  echo
  printf '%-31s %9s  %s\n' stage seconds result
  local i
  for i in "${!STAGE_NAMES[@]}"; do
    printf '%-31s %9s  %s\n' "${STAGE_NAMES[$i]}" "${STAGE_TIMES[$i]}" "${STAGE_RESULTS[$i]}"
  done
  printf '%-31s %9s\n' total "$(elapsed "$started")"
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
  stop_background
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

# The BigQuery run: two shards of about equal length (module filters on the `it` test binary;
# a filter is a substring of `module::test`, and `gate::` does not match `gate_truth::`), at
# once, each on its own bqemulator, their lines prefixed [bq1] / [bq2]. Together: the shared
# behavioural suite (gate, gate_truth, cascade, lineage, backfill, exactly_once, off_season,
# publication, relay) with claims in Firestore (the default), exactly_once again on BigQuery's
# claims table (`coordination = "bigquery"`), the BigQuery model's suite (bigquery_model:
# conflicts, transient errors, deadlines, location on scripts/bqmodel), the jobs count and the
# end-to-end tests (a 10-day `backfill --all --via-pubsub` among them). The BigQuery hosts are the model in front of each bqemulator (scripts/emulators.sh).
emulator_suite() {
  await_background "bqemulator venv"
  # shellcheck disable=SC2016 # expanded by the inner bash
  PHASEGATE_BQ_EMULATORS=2 scripts/emulators.sh bash -c '
    set -uo pipefail
    export PHASEGATE_TEST_BACKEND=bigquery
    read -r -a hosts <<<"$BIGQUERY_EMULATOR_HOSTS"
    shard() { # N
      export BIGQUERY_EMULATOR_HOST=${hosts[$1 - 1]}
      if (($1 == 1)); then
        cargo test --locked --test it -- cascade:: gate:: &&
          cargo test --locked --test it -- --nocapture bigquery_model:: &&
          cargo test --locked --test it -- --ignored e2e_emulators::
      else
        cargo test --locked --test it -- backfill:: exactly_once:: lineage:: gate_truth:: off_season:: publication:: relay:: &&
          cargo test --locked --test it -- --nocapture bigquery_jobs:: &&
          PHASEGATE_TEST_COORDINATION=bigquery cargo test --locked --test it -- exactly_once::
      fi 2>&1 | sed -u "s/^/[bq$1] /"
    }
    shard 1 &
    one=$!
    shard 2 &
    two=$!
    rc=0
    wait "$one" || { rc=1; echo "== shard [bq1] failed" >&2; }
    wait "$two" || { rc=1; echo "== shard [bq2] failed" >&2; }
    exit "$rc"
  '
}

terraform_checks() {
  await_background "terraform venv"
  scripts/check-terraform.sh
}

# Lints during the build: exactly what `cargo clippy -- -D warnings` sets up (clippy-driver
# wraps rustc for the workspace's crates only; dependencies are never linted), exported for
# every cargo command of this run: another wrapper or lint set would rebuild the workspace.
DENY_WARNINGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__" # = `cargo clippy -- -D warnings`
# CLIPPY_ARGS is how cargo-clippy hands its flags to clippy-driver, not a documented interface:
# use the wrapper only if, on a probe file, clippy-driver warns without it and fails with it.
clippy_driver_denies_warnings() { # DRIVER
  local dir rc=1
  dir=$(mktemp -d "${TMPDIR:-/tmp}/phasegate-clippy-probe.XXXXXX")
  printf 'pub fn f(v: &[u8]) -> bool {\n    v.len() == 0\n}\n' >"$dir/probe.rs"
  local build=("$1" --edition 2021 --crate-type lib --emit=metadata --out-dir "$dir" "$dir/probe.rs")
  if "${build[@]}" >/dev/null 2>&1 && ! CLIPPY_ARGS="$DENY_WARNINGS" "${build[@]}" >/dev/null 2>&1; then
    rc=0
  fi
  rm -rf "$dir"
  return "$rc"
}
CLIPPY_DRIVER=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver || true)
if [[ -n "$CLIPPY_DRIVER" ]] && clippy_driver_denies_warnings "$CLIPPY_DRIVER"; then
  export RUSTC_WORKSPACE_WRAPPER="$CLIPPY_DRIVER"
  export CLIPPY_ARGS="$DENY_WARNINGS"
else
  echo "== clippy-driver not found or not denying warnings through CLIPPY_ARGS: separate clippy stage"
  CLIPPY_DRIVER=
fi
# On CI (a fresh clone) incremental compilation only writes caches nobody reads: without it the
# workspace's crates build ~20% faster. Locally it stays on.
if [[ -n "${CI:-}" ]]; then
  export CARGO_INCREMENTAL=0
fi

if [[ "${PHASEGATE_SKIP_EMULATORS:-0}" != 1 ]]; then
  background "bqemulator venv" scripts/emulators.sh --prepare
fi
if [[ -d terraform ]]; then
  background "terraform venv" scripts/check-terraform.sh --prepare
fi

stage fmt cargo fmt --all -- --check
stage "module cycles" scripts/check-module-cycles.py --self-test
if [[ -n "$CLIPPY_DRIVER" ]]; then
  stage "clippy + build" cargo test --locked --all-targets --no-run
else
  stage clippy cargo clippy --all-targets --locked -- -D warnings
fi
# The light build runs in the background, at the lowest priority, while the tests run: they
# leave the CPU mostly idle (crash_recovery alone can wait up to a minute for the workers'
# outbox sweep). It starts a few seconds after them because cargo locks the target directory
# while it builds (not while tests run): the tests' cargo takes that lock first and releases it
# at once, everything being built. (If the order ever flips, the tests wait for the light
# build: as slow as running one after the other, never wrong.)
background "light build" bash -c \
  'sleep 5; exec cargo clippy --no-default-features --all-targets --locked -- -D warnings'
stage tests cargo test --locked
stage "light build, rest" await_background "light build"
if [[ "${PHASEGATE_SKIP_EMULATORS:-0}" != 1 ]]; then
  stage "emulator suite" emulator_suite
else
  skip "emulator suite" PHASEGATE_SKIP_EMULATORS=1
fi
if [[ -d terraform ]]; then
  stage "terraform checks" terraform_checks
else
  skip "terraform checks" "no terraform/"
fi
