#!/usr/bin/env bash
# Side-by-side benchmark: `phasegate serve --phase analytics` against the seed's design as a
# Python push worker (Flask + gunicorn on SQLite), the baseline in
# ../shared/baselines/seed-python-worker (its README.md says how the comparison is made).
#
#   scripts/bench-vs-baseline.sh
#   DAYS=2000 ROUNDS=2 DURATION=3 scripts/bench-vs-baseline.sh      (a quick smoke run)
#
# Environment:
#   ROUNDS         interleaved rounds; each runs both sides, alternating which goes first (default 6)
#   DURATION       seconds of wrk load per side and round (default 10)
#   DAYS, PLAYERS  seeded days (from 2000-01-01) x players per day, both sides (default 73000 x 20;
#                  2000-01-01 + 73,000 days is in 2199, the last year phasegate accepts)
#   PHASEGATE_BIN  a phasegate binary to measure; skips `cargo build --release --locked`
#   BASELINE_DIR   the baseline (default ../shared/baselines/seed-python-worker, from the repo root)
#   RESEED=1       seed the pristine databases again (they are cached per DAYS x PLAYERS; reseed
#                  after a change to phasegate's ledger schema)
#   RUST_LOG       passed to phasegate as is (unset: its default, info, one log line set per push;
#                  gunicorn writes no access log)
#
# Both sides get the same data, seeded once into pristine databases under
# target/bench-vs-baseline/pristine-DAYSxPLAYERS/:
#   baseline:  `seed_data.py DAYS PLAYERS` (BASELINE_DB names the file): raw_boxscores rows and a
#              `raw_processor` success in its run history for every day.
#   phasegate: `phasegate init` on a copy of the baseline's phasegate-pipeline.toml (sqlite_path
#              rewritten into the bench directory), `seed_phasegate_source.py DB DAYS PLAYERS`, then
#              `phasegate backfill --phase raw` over the range, so the ledger holds a raw success
#              for every day.
#   both:      CREATE INDEX pgs_date ON player_game_summary(game_date); WAL checkpointed away.
# Seeding time on the 2-core dev VM (defaults, 73,000 days x 20 players): baseline 4 s,
# phasegate 15 s (init + source rows + `backfill --phase raw` of 73,000 dates at --parallel 1,
# the backfill being most of it); printed on every seeding, then cached. Pristine databases
# take ~125 MB; the whole default run takes ~3 minutes. Run it on an idle machine: other load
# costs the baseline (three processes) far more than phasegate and inflates the ratios.
# The load is scripts/push-fresh.lua: the baseline's push-fresh.lua with the second wrk thread
# starting at day DAYS/2 instead of 20,000 (at ~4,000 req/s the first thread ran into the
# second's dates). Each thread has DAYS/2 seeded dates: the default of 73,000 leaves room for
# ~7,300 req/s in a 10 s round (60,000 was the default until phasegate passed 6,000). Past
# them a side pushes dates already done or not seeded; the checks flag it.
#
# Each round and side: a fresh copy of the pristine database (no -wal/-shm), the server started
# in its own process group on a free port, then
#   cold start:  time from spawn to the first 2xx answer to one valid push (curl in a loop, ~10 ms
#                granularity; the date is the last seeded day, which wrk does not reach)
#   load:        wrk -t2 -c8 -d${DURATION}s --latency -s scripts/push-fresh.lua
#                http://127.0.0.1:PORT/push -- DAYS/2
#                (every request a new seeded date, skip_downstream_trigger set)
#   CPU / push:  utime+stime of every process of the server's group (gunicorn master and
#                workers) from /proc, before and after wrk, divided by the requests wrk completed
#   RSS:         VmRSS summed over the group after the load
#   checks:      non-2xx answers and socket errors reported by wrk, analytics successes written to
#                the run history, error lines in the server's log — each flagged when non-zero
# The server's process group is killed after each side (and on exit or interrupt).
#   baseline:  BASELINE_DB=work.db gunicorn -w 2 -b 127.0.0.1:PORT app:app (from BASELINE_DIR;
#              plus --no-control-socket when gunicorn has it, so nothing is written to ~/.gunicorn)
#   phasegate: PORT=... PHASEGATE_SQLITE_PATH=work.db phasegate --config X serve --phase analytics
#              (the toml sets auth.mode = "disabled": unauthenticated local pushes); the binary is
#              copied to target/bench-vs-baseline/phasegate first, so a concurrent cargo build
#              cannot swap it between rounds
#
# Output: a markdown table of min/median/max per side and the ratio of medians; raw per-round
# results in target/bench-vs-baseline/results.csv; server logs in target/bench-vs-baseline/logs/.
# Needs python3 (with venv), curl and wrk (`apt-get install -y wrk`).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
rounds=${ROUNDS:-6}
duration=${DURATION:-10}
days=${DAYS:-73000}
players=${PLAYERS:-20}
bench=$repo/target/bench-vs-baseline
venv=$bench/venv
pristine=$bench/pristine-${days}x$players
logs=$bench/logs
work=$bench/work
csv=$bench/results.csv
toml=$pristine/phasegate-pipeline.toml
server_pid=""

die() { echo "bench-vs-baseline: $*" >&2; exit 1; }
note() { echo "== $*" >&2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
day() { date -u -d "2000-01-01 + $1 days" +%F; }

resolve_baseline() {
  local dir=${BASELINE_DIR:-../shared/baselines/seed-python-worker}
  [[ -f $dir/app.py && -f $dir/push-fresh.lua ]] || die "no baseline in $dir (set BASELINE_DIR)"
  baseline_dir=$(cd "$dir" && pwd)
}

build_phasegate() {
  if [[ -n ${PHASEGATE_BIN:-} ]]; then
    bin=$(realpath "$PHASEGATE_BIN")
  else
    cargo build --release --locked
    bin=$repo/target/release/phasegate
  fi
  [[ -x $bin ]] || die "$bin is not an executable"
  # A snapshot: a concurrent cargo build must not swap the binary between rounds.
  mkdir -p "$bench"
  cp "$bin" "$bench/phasegate"
  bin=$bench/phasegate
}

check_tools() {
  command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 2; }
  command -v curl >/dev/null || die "curl is missing"
  command -v python3 >/dev/null || die "python3 is missing"
}

ensure_venv() {
  [[ -x $venv/bin/gunicorn ]] && return
  note "creating the baseline's venv in $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet flask gunicorn
}

# Recent gunicorn (27.0.1 here) opens a control socket in ~/.gunicorn unless told not to.
gunicorn_options() {
  local help
  help=$("$venv/bin/gunicorn" --help)
  gunicorn_opts=(-w 2)
  [[ $help != *--no-control-socket* ]] || gunicorn_opts+=(--no-control-socket)
}

# CREATE INDEX pgs_date, then fold the WAL into the main file so a copy of it is complete.
finish_db() {
  python3 - "$1" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("CREATE INDEX IF NOT EXISTS pgs_date ON player_game_summary(game_date)")
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
c.close()
PY
  [[ ! -s $1-wal ]] || die "$1-wal still holds pages after the checkpoint"
  rm -f "$1-wal" "$1-shm"
}

seed_baseline() {
  (cd "$baseline_dir" && BASELINE_DB=$pristine/baseline.db PYTHONDONTWRITEBYTECODE=1 \
    "$venv/bin/python" seed_data.py "$days" "$players")
  finish_db "$pristine/baseline.db"
}

seed_phasegate() {
  local db=$pristine/phasegate.db blog=$logs/backfill-raw-${days}x$players.log
  sed "s|^sqlite_path = .*|sqlite_path = \"$db\"|" "$baseline_dir/phasegate-pipeline.toml" >"$toml"
  grep -q "^sqlite_path = \"$db\"" "$toml" || die "could not rewrite sqlite_path in $toml"
  "$bin" --config "$toml" init
  python3 "$baseline_dir/seed_phasegate_source.py" "$db" "$days" "$players"
  "$bin" --config "$toml" backfill --phase raw --from "$(day 0)" --to "$(day $((days - 1)))" \
    >"$blog" 2>&1 || die "backfill failed: see $blog"
  tail -n 2 "$blog" >&2
  finish_db "$db"
}

timed() {
  local t0
  t0=$(now_ms)
  "$@"
  note "$1 took $(( ($(now_ms) - t0) / 1000 )) s"
}

seed() {
  [[ -f $pristine/.done && ${RESEED:-0} != 1 ]] && return
  note "seeding $days days x $players players into $pristine"
  rm -rf "$pristine"
  mkdir -p "$pristine"
  timed seed_baseline
  timed seed_phasegate
  touch "$pristine/.done"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# setsid: the server leads its own process group (its pid is the group id), so the whole
# group (gunicorn's workers too) is measured and killed together. setsid does not fork here:
# without job control a background child is not a group leader, so $! is the server itself.
start_server() {
  local side=$1 port=$2 db=$3 log=$4
  if [[ $side == baseline ]]; then
    BASELINE_DB=$db PYTHONDONTWRITEBYTECODE=1 setsid "$venv/bin/gunicorn" --chdir "$baseline_dir" \
      "${gunicorn_opts[@]}" -b "127.0.0.1:$port" app:app >"$log" 2>&1 &
  else
    PORT=$port PHASEGATE_SQLITE_PATH=$db setsid "$bin" --config "$toml" serve --phase analytics \
      >"$log" 2>&1 &
  fi
  server_pid=$!
}

stop_server() {
  [[ -n $server_pid ]] || return 0
  kill -TERM -- "-$server_pid" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 -- "-$server_pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL -- "-$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
cleanup() { stop_server; rm -rf "$work"; }
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

group_pids() {
  local f rest s
  for f in /proc/[0-9]*/stat; do
    rest=$(cat "$f" 2>/dev/null) || continue
    rest=${rest##*) }
    read -r -a s <<<"$rest"
    [[ ${s[2]} == "$1" ]] && { f=${f#/proc/}; echo "${f%/stat}"; }
  done
  return 0
}

# utime+stime in clock ticks, summed over the group (fields 14 and 15 of /proc/PID/stat).
group_cpu_ticks() {
  local p rest s total=0
  for p in $(group_pids "$1"); do
    rest=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    rest=${rest##*) }
    read -r -a s <<<"$rest"
    total=$((total + s[11] + s[12]))
  done
  echo "$total"
}

group_rss_kb() {
  local p kb total=0
  for p in $(group_pids "$1"); do
    kb=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$p/status" 2>/dev/null || true)
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}

# Running, not exited (an unreaped child is a zombie, which kill -0 still finds).
alive() {
  local rest
  rest=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  rest=${rest##*) }
  [[ ${rest:0:1} != Z ]]
}

# One push in push-fresh.lua's format: envelope, base64 {"data_date"}, skip_downstream_trigger.
push_body() {
  local data
  data=$(printf '{"data_date":"%s"}' "$1" | base64 -w0)
  printf '{"message":{"data":"%s","messageId":"%s","attributes":{"skip_downstream_trigger":"true"}},"subscription":"projects/demo/subscriptions/analytics"}' \
    "$data" "$2"
}

# Milliseconds from $2 (spawn time) to the first 2xx answer to one push.
cold_start() {
  local port=$1 t0=$2 body code=""
  body=$(push_body "$(day $((days - 1)))" "cold-$RANDOM")
  for _ in $(seq 6000); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
      --data "$body" "http://127.0.0.1:$port/push" || true)
    [[ $code == 2?? ]] && { echo $(($(now_ms) - t0)); return; }
    alive "$server_pid" || die "the server died before answering: see its log in $logs"
    sleep 0.01
  done
  die "no 2xx within 60 s (last answer: $code)"
}

# wrk's latency with its unit (us, ms, s, m) in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : -1
    if (f < 0) { print "NaN"; exit 1 }
    printf "%.3f", n * f }'
}

# "req_s p50_ms p99_ms requests non2xx socket_errors" from wrk's output.
parse_wrk() {
  local f=$1 rps p50 p99 reqs non2xx sockerr
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$f")
  p50=$(awk '$1 == "50%" { print $2 }' "$f")
  p99=$(awk '$1 == "99%" { print $2 }' "$f")
  reqs=$(awk '/ requests in / { print $1 }' "$f")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$f")
  sockerr=$(awk -F'[ ,]+' '/Socket errors:/ { print $4 + $6 + $8 + $10 }' "$f")
  [[ -n $rps && -n $p50 && -n $p99 && -n $reqs ]] || die "cannot parse wrk output $f"
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $reqs ${non2xx:-0} ${sockerr:-0}"
}

analytics_successes() {
  python3 - "$1" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
print(c.execute("SELECT count(*) FROM processor_run_history WHERE processor_name = "
                "'player_game_summary' AND status = 'success'").fetchone()[0])
PY
}

log_errors() { grep -cE 'ERROR|Traceback|panicked|CRITICAL' "$1" || true; }

# One side, one round: appends a CSV row.
run_side() {
  local side=$1 round=$2 order=$3 db=$work/$1.db tag=$1-round$2
  local port t0 cold cpu0 cpu1 rss res wrk_out rps p50 p99 reqs non2xx sockerr
  rm -f "$db" "$db-wal" "$db-shm" "$db-journal"
  cp "$pristine/$side.db" "$db"
  port=$(free_port)
  t0=$(now_ms)
  start_server "$side" "$port" "$db" "$logs/$tag.log"
  cold=$(cold_start "$port" "$t0")
  cpu0=$(group_cpu_ticks "$server_pid")
  wrk -t2 -c8 -d"${duration}s" --latency -s "$repo/scripts/push-fresh.lua" \
    "http://127.0.0.1:$port/push" -- $((days / 2)) >"$logs/$tag.wrk" 2>&1 ||
    die "wrk failed: $logs/$tag.wrk"
  cpu1=$(group_cpu_ticks "$server_pid")
  rss=$(group_rss_kb "$server_pid")
  stop_server
  wrk_out=$(parse_wrk "$logs/$tag.wrk")
  read -r rps p50 p99 reqs non2xx sockerr <<<"$wrk_out"
  res=$(awk -v c="$((cpu1 - cpu0))" -v hz="$(getconf CLK_TCK)" -v n="$reqs" -v r="$rss" \
    'BEGIN { printf "%.4f,%.1f", c * 1000 / hz / n, r / 1024 }')
  echo "$round,$side,$order,$rps,$p50,$p99,${res%,*},$cold,${res#*,},$reqs,$non2xx,$sockerr,$(analytics_successes "$db"),$(log_errors "$logs/$tag.log")" >>"$csv"
  note "round $round $side: $rps req/s, p50 $p50 ms, p99 $p99 ms, cold $cold ms, non-2xx $non2xx"
}

run_rounds() {
  local r first second
  rm -f "$logs"/*-round*.log "$logs"/*-round*.wrk
  echo "round,side,order,req_s,p50_ms,p99_ms,cpu_per_push_ms,cold_start_ms,rss_mb,requests,non2xx,socket_errors,analytics_successes,log_error_lines" >"$csv"
  mkdir -p "$work"
  for ((r = 1; r <= rounds; r++)); do
    if ((r % 2)); then first=phasegate second=baseline; else first=baseline second=phasegate; fi
    run_side "$first" "$r" 1
    run_side "$second" "$r" 2
  done
}

report() {
  python3 - "$csv" "$days" "$players" "$rounds" "$duration" <<'PY'
import csv, statistics, sys
path, days, players, rounds, duration = sys.argv[1:]
rows = list(csv.DictReader(open(path)))
side = lambda s, k: [float(r[k]) for r in rows if r["side"] == s]
metrics = [("fresh dates req/s", "req_s", True), ("p50 ms", "p50_ms", False),
           ("p99 ms", "p99_ms", False), ("CPU per push ms", "cpu_per_push_ms", False),
           ("cold start ms", "cold_start_ms", False), ("RSS MB", "rss_mb", False)]
fmt = lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"
print(f"\n{days} days x {players} players, {rounds} rounds x {duration} s, wrk -t2 -c8, "
      "push-fresh.lua\n")
print("| metric | phasegate min | median | max | baseline min | median | max | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, key, higher in metrics:
    p, b = side("phasegate", key), side("baseline", key)
    pm, bm = statistics.median(p), statistics.median(b)
    num, den = (pm, bm) if higher else (bm, pm)
    ratio = f"{num / den:.2f}x" if den else "n/a"
    print(f"| {name} | {fmt(min(p))} | {fmt(pm)} | {fmt(max(p))} | {fmt(min(b))} | {fmt(bm)} "
          f"| {fmt(max(b))} | {ratio} |")
print("\nratio: of the medians, > 1 means phasegate is better: phasegate/baseline for req/s; "
      "baseline/phasegate for p50, p99, CPU per push, cold start and RSS (lower is better).")
flags = [f"round {r['round']} {r['side']}: {k} = {r[k]}" for r in rows
         for k in ("non2xx", "socket_errors", "log_error_lines") if float(r[k]) != 0]
flags += [f"round {r['round']} {r['side']}: {r['analytics_successes']} analytics successes "
          f"for {r['requests']} requests (+1 cold-start push)" for r in rows
          if int(r["analytics_successes"]) < int(r["requests"]) + 1]
print("\n" + ("\n".join("FLAG " + f for f in flags) if flags else
              "checks: every answer 2xx, no socket errors, no error lines in the logs, "
              "one analytics success per push"))
PY
}

warn_range() {
  ((days >= 25000)) || note "warning: DAYS=$days < 25000: each wrk thread has DAYS/2 dates;" \
    "a fast side runs past them (dates already done or not seeded)"
}

main() {
  resolve_baseline
  warn_range
  check_tools
  build_phasegate
  mkdir -p "$bench" "$logs"
  ensure_venv
  gunicorn_options
  seed
  run_rounds
  report
  echo "raw results: $csv; logs: $logs" >&2
}

main "$@"
