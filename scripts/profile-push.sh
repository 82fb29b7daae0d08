#!/usr/bin/env bash
# One round of the side-by-side benchmark's phasegate half, for A/B comparisons and profiles:
# `phasegate serve --phase analytics` on a fresh copy of the pristine database that
# scripts/bench-vs-baseline.sh seeded, under `wrk -t2 -c8` with scripts/push-fresh.lua.
#
#   scripts/profile-push.sh                 throughput, p50/p99, CPU per push, SQLite counters
#   scripts/profile-push.sh perf            the same under `perf record` (dwarf call graphs,
#                                           4 s) into target/profile-push/perf.data
#   scripts/profile-push.sh stat            context switches and task clock (`perf stat`)
#   BIN=/tmp/pg-a scripts/profile-push.sh   another binary (A/B: alternate two binaries over
#                                           several rounds; this VM drifts by up to 30 % over
#                                           minutes, so one round each proves nothing)
#
# Environment: BIN (default target/release/phasegate), CONNS (8), THREADS (2), DUR (8 s),
# DAYS and PLAYERS (73000 x 20: which pristine database). Run scripts/bench-vs-baseline.sh
# once first (it seeds the pristine databases). Reading a profile:
#   perf report -i target/profile-push/perf.data --children --sort sym --stdio -g none
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
case "$mode" in
  perf | stat | "") ;;
  *) echo "unknown mode '$mode' (perf, stat or nothing)" >&2; exit 2 ;;
esac
bin="${BIN:-$PWD/target/release/phasegate}"
pristine="$PWD/target/bench-vs-baseline/pristine-${DAYS:-73000}x${PLAYERS:-20}"
lua="$PWD/scripts/push-fresh.lua"
work="$PWD/target/profile-push"
port=18088
[[ -f "$pristine/phasegate.db" ]] || { echo "no $pristine/phasegate.db: run scripts/bench-vs-baseline.sh first" >&2; exit 2; }
[[ -x "$bin" ]] || { echo "no binary $bin: cargo build --release" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is not installed" >&2; exit 2; }
rm -rf "$work" && mkdir -p "$work"
cp "$pristine/phasegate.db" "$work/work.db"
tomls=("$pristine"/*.toml)
toml="${tomls[0]}"

PORT=$port PHASEGATE_SQLITE_PATH="$work/work.db" "$bin" --config "$toml" serve --phase analytics \
  >"$work/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done

cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }   # utime + stime, clock ticks
t0=$(cpu)
side=""
case "$mode" in
  perf) perf record -F 499 --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" -- sleep 4 >/dev/null 2>&1 & side=$! ;;
  stat) perf stat -e context-switches,task-clock -p "$pid" -o "$work/perf-stat.txt" -- sleep "${DUR:-8}" >/dev/null 2>&1 & side=$! ;;
esac
wrk -t"${THREADS:-2}" -c"${CONNS:-8}" -d"${DUR:-8}s" --latency -s "$lua" "http://127.0.0.1:$port/push" \
  -- $((${DAYS:-73000} / 2)) >"$work/wrk.txt"
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^phasegate_sqlite' || true
t1=$(cpu)
[[ -n "$side" ]] && wait "$side"
grep -E 'Requests/sec|  50%|  99%|Non-2xx' "$work/wrk.txt"
n=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
awk -v a="$t0" -v b="$t1" -v n="$n" -v hz="$(getconf CLK_TCK)" \
  'BEGIN { printf "CPU per push: %.3f ms\n", (b - a) * 1000 / hz / n }'
[[ "$mode" == stat ]] && cat "$work/perf-stat.txt"
exit 0
