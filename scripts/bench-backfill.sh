#!/usr/bin/env bash
# Wall time of a full backfill of all four phases of the NBA example on the embedded default:
# `backfill --all` at several --parallel values, beside the seed's way (a shell loop calling
# `phasegate run --skip-downstream-trigger` once per phase and date), on the same data.
#
#   scripts/bench-backfill.sh [DAYS]        (default 365)
set -euo pipefail
cd "$(dirname "$0")/.."
days="${1:-365}"
cargo build --release --locked --quiet
bin="$PWD/target/release/phasegate"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PHASEGATE_CONFIG="$PWD/examples/nba/pipeline.toml"
from=2024-10-01
to=$(date -d "$from + $((days - 1)) days" +%F)

fresh() {
  rm -f "$work"/bench.db*
  export PHASEGATE_SQLITE_PATH="$work/bench.db"
  "$bin" sample-data --from "$from" --days "$days" --clean >/dev/null
}

now() { date +%s.%N; }

echo "NBA example, $days days ($from..$to), 4 phases, SQLite, $(nproc) cores"
for p in 1 2 4; do
  fresh
  t0=$(now)
  "$bin" backfill --all --from "$from" --to "$to" --yes --parallel "$p" >/dev/null 2>&1
  t1=$(now)
  printf 'backfill --all --parallel %-2s : %6.2f s\n' "$p" "$(echo "$t1 - $t0" | bc)"
done

fresh
t0=$(now)
for phase in raw analytics precompute predictions; do
  d="$from"
  while [[ "$d" < "$to" || "$d" == "$to" ]]; do
    "$bin" run --phase "$phase" --date "$d" --skip-downstream-trigger >/dev/null 2>&1 || true
    d=$(date -d "$d + 1 day" +%F)
  done
done
t1=$(now)
printf 'shell loop of phasegate run  : %6.2f s\n' "$(echo "$t1 - $t0" | bc)"
"$bin" verify --phase predictions --from "$from" --to "$to" | tail -1
