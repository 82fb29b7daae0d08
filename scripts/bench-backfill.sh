#!/usr/bin/env bash
# Wall time of a full backfill of all four phases of the NBA example on the embedded default:
# `backfill --all` at several --parallel values, beside the seed's way (a shell loop calling
# `phasegate run --skip-downstream-trigger` once per phase and date), on the same data, and
# the ratio of each to the shell loop.
#
#   scripts/bench-backfill.sh [DAYS]        (default 365)
#
# Environment:
#   PHASEGATE_BIN   a phasegate binary to measure (default: build this tree in release)
#   PARALLEL        the --parallel values to try (default "1 2 4")
#   SHELL_LOOP      0 to skip the shell loop (then no ratios are printed)
set -euo pipefail
cd "$(dirname "$0")/.."
days="${1:-365}"
if [[ -n "${PHASEGATE_BIN:-}" ]]; then
  bin="$PHASEGATE_BIN"
else
  cargo build --release --locked --quiet
  bin="$PWD/target/release/phasegate"
fi
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

# Every phase complete and gap-free, or the measurement is void.
complete() {
  "$bin" verify --phase predictions --from "$from" --to "$to" >/dev/null \
    || { echo "predictions are NOT complete: measurement void" >&2; exit 1; }
}

echo "NBA example, $days days ($from..$to), 4 phases, SQLite, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
declare -A took
for p in ${PARALLEL:-1 2 4}; do
  fresh
  t0=$(now)
  "$bin" backfill --all --from "$from" --to "$to" --yes --parallel "$p" >/dev/null 2>&1
  t1=$(now)
  complete
  took[$p]=$(echo "$t1 - $t0" | bc)
  printf 'backfill --all --parallel %-2s : %6.2f s\n' "$p" "${took[$p]}"
done

[[ "${SHELL_LOOP:-1}" == 0 ]] && exit 0
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
complete
loop=$(echo "$t1 - $t0" | bc)
printf 'shell loop of phasegate run  : %6.2f s\n' "$loop"
for p in ${PARALLEL:-1 2 4}; do
  printf 'ratio shell loop / backfill --parallel %-2s : %5.1fx\n' "$p" "$(echo "$loop / ${took[$p]}" | bc -l)"
done
