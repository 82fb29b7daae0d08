#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this script).
#
#   scripts/test.sh
#
# 1. formatting and lints (cargo fmt --check, clippy -D warnings);
# 2. every test on the embedded default (SQLite + in-process bus);
# 3. the emulator suite (scripts/emulators.sh creates the venv, starts Google's Pub/Sub
#    emulator and bqemulator on free ports, and always stops them):
#    - the shared behavioural suite (gate, cascade, backfill) again, on BigQuery;
#    - end to end: one worker process per phase behind Pub/Sub push subscriptions;
# 4. the deployment: terraform fmt, structure checks and validation cases (python-hcl2,
#    terraform plan), hadolint on deploy/Dockerfile, checkov (scripts/check-terraform.sh).
# Set PHASEGATE_SKIP_EMULATORS=1 to skip step 3 locally.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== tests (embedded default: SQLite + in-process bus)"
cargo test --locked

if [[ "${PHASEGATE_SKIP_EMULATORS:-0}" != 1 ]]; then
  echo "== tests on the emulators (BigQuery: shared suite; Pub/Sub + BigQuery: end to end)"
  emu_start=$SECONDS
  scripts/emulators.sh bash -c '
    set -euo pipefail
    export PHASEGATE_TEST_BACKEND=bigquery
    cargo test --locked --test gate --test cascade --test backfill
    cargo test --locked --test e2e_emulators -- --ignored
  '
  echo "== emulator suite: $((SECONDS - emu_start)) s"
fi

if [[ -d terraform ]]; then
  echo "== terraform checks"
  scripts/check-terraform.sh
fi
echo "== all checks passed in $((SECONDS - start)) s"
