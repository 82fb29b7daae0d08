#!/usr/bin/env bash
# Coordination throughput in Firestore (issue 26), on the emulators (scripts/emulators.sh
# starts Firestore, Pub/Sub and the BigQuery model):
#   1. claim + release cycles per second on distinct dates, and rounds of one contended date
#      (exactly one winner each), then full ledger cycles with BigQuery's appends
#      (benches/coordination.rs);
#   2. the long backfill: `backfill --all --via-pubsub --parallel 8` over DAYS days x 4
#      phases through one push worker per phase, with failed and duplicate runs counted and
#      the coordination time (every worker's Firestore calls) against the wall time.
#
#   scripts/bench-coordination.sh [DAYS]      (default 365)
#
# Environment: PHASEGATE_BQ_MODEL_LATENCY_MS=LO-HI, the BigQuery model's job latency
# (default here 300-1500, real BigQuery's range; the backfill of 365 days then takes tens of
# minutes — try DAYS=30 first). CYCLES, CONCURRENCY, CONTENDERS, ROUNDS, FULL size part 1.
set -euo pipefail
cd "$(dirname "$0")/.."
days="${1:-365}"
export PHASEGATE_BQ_MODEL_LATENCY_MS="${PHASEGATE_BQ_MODEL_LATENCY_MS:-300-1500}"
echo "== 1. claim + release cycles (job latency ${PHASEGATE_BQ_MODEL_LATENCY_MS} ms)"
scripts/emulators.sh cargo bench --locked --bench coordination -- \
  --cycles "${CYCLES:-1000}" --concurrency "${CONCURRENCY:-16}" \
  --contenders "${CONTENDERS:-50}" --rounds "${ROUNDS:-20}" --full "${FULL:-100}"
echo "== 2. backfill --all --via-pubsub --parallel 8 over $days days"
PHASEGATE_BENCH_DAYS="$days" scripts/emulators.sh env PHASEGATE_TEST_BACKEND=bigquery \
  cargo test --locked --test it -- --ignored --nocapture \
  e2e_emulators::a_long_backfill_through_the_push_workers_has_no_failed_or_duplicate_run
