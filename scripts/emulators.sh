#!/usr/bin/env bash
# Start Google's Pub/Sub and Firestore emulators and bqemulator on free ports, run a command
# with their addresses in the environment, and always stop them all: each emulator runs in
# its own process group, and every group this run started is killed on success, failure and
# interrupt.
#
#   scripts/emulators.sh COMMAND [ARGS...]
#   scripts/emulators.sh --prepare      # only create the bqemulator venv, start nothing
#
# Exports to COMMAND: PUBSUB_EMULATOR_HOST, FIRESTORE_EMULATOR_HOST, BIGQUERY_EMULATOR_HOST,
# PHASEGATE_EMULATOR_PROJECT, and BIGQUERY_EMULATOR_HOSTS (every bqemulator's host:port,
# space-separated; the first is BIGQUERY_EMULATOR_HOST). PHASEGATE_BQ_EMULATORS=N starts N
# bqemulators (default 1): one is a single Python process that keeps one core busy, so suites
# split over several run faster.
# The Firestore emulator (gcloud's, Native mode; the claims and leases) serves any project and
# any database id, named ones included, with nothing created first; it has no IAM, applies no
# TTL and has no index settings (DEVELOPERS.md, "Emulator facts").
# Creates the bqemulator venv in .venv on first use (pinned versions below).
# In front of each bqemulator runs the BigQuery model (scripts/bqmodel/model.py): a proxy that
# adds BigQuery's documented limits (DML concurrency, transaction conflicts, job latency,
# long jobs, jobs.cancel, location, injected transient errors), so BIGQUERY_EMULATOR_HOST(S)
# point at the model. PHASEGATE_BQ_MODEL=0 exports the plain bqemulators instead.
# PHASEGATE_BQ_MODEL_LATENCY_MS=LO-HI sets the model's job latency (default 5-20 ms for CI;
# real BigQuery: 300-1500); the model's admin API is BIGQUERY_MODEL_HOST(S) (= the exported
# hosts when the model runs, empty otherwise).
# With PHASEGATE_EMULATOR_PGIDS=FILE, appends each started process group id to FILE (one a
# line) so a caller can check afterwards that none is left (scripts/test.sh does).
# Exit status: COMMAND's; 1 if an emulator group survived SIGKILL; 130/143 on INT/TERM.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${PHASEGATE_VENV:-$PWD/.venv}"
PROJECT="${PHASEGATE_EMULATOR_PROJECT:-phasegate-test}"
LOGS="${PHASEGATE_EMULATOR_LOGS:-$PWD/target/emulator-logs}"
mkdir -p "$LOGS"

ensure_venv() {
  if [[ -x "$VENV/bin/bqemulator" && -f "$VENV/.phasegate-ready" ]]; then
    return
  fi
  echo "== creating $VENV (bqemulator)"
  # --clear: a venv left half-made by an interrupted run (no pip yet) is made again.
  python3 -m venv --clear "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    bqemulator==1.4.0 duckdb==1.5.5 duckdb-extension-spatial==1.5.5 duckdb-extensions numpy \
    starlette==1.10.0 httpx==0.29.0 uvicorn==0.55.0 # the BigQuery model (scripts/bqmodel)
  # Offline, bqemulator refuses to start unless the spatial extension is installed.
  "$VENV/bin/python" -c "from duckdb_extensions import import_extension; import_extension('spatial')"
  touch "$VENV/.phasegate-ready"
}

if [[ "${1:-}" == --prepare ]]; then # scripts/test.sh runs this in the background early on
  ensure_venv
  exit 0
fi

TAKEN_PORTS=" "
free_port() { # VAR: set VAR to a free port, never one this run already handed out
  local port
  while :; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
    [[ "$TAKEN_PORTS" == *" $port "* ]] || break
  done
  TAKEN_PORTS+="$port "
  printf -v "$1" '%s' "$port"
}

wait_http() { # URL NAME SECONDS
  local deadline=$((SECONDS + $3))
  until curl -s -o /dev/null "$1"; do
    if ((SECONDS > deadline)); then
      echo "$2 did not answer at $1 within $3 s; log:" >&2
      tail -n 40 "$LOGS/$2.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

# Pid files are fresh per run (a new temporary directory), never left over from an earlier
# run on a reused target directory. Each holds the pid of the `sh` that setsid made a session
# and process-group leader, i.e. the group id.
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/phasegate-emulators.XXXXXX")
NAMES=()
declare -A BGPID=()

group_of() { # NAME -> the group id; falls back to the background pid (the same process:
  # without job control the background child is no group leader, so setsid does not fork)
  local pidfile="$RUN_DIR/$1.pid"
  if [[ -s "$pidfile" ]]; then cat "$pidfile"; else echo "${BGPID[$1]:-}"; fi
}

alive() { # PGID: does any process of the group still exist?
  kill -0 -- "-$1" 2>/dev/null
}

STOPPED=0
stop_all() {
  ((STOPPED)) && return 0
  STOPPED=1
  local pgids=() name pgid
  # Read the pid files now, not when starting: a slow start cannot be missed.
  for name in "${NAMES[@]}"; do
    pgid=$(group_of "$name")
    [[ -n "$pgid" ]] && pgids+=("$pgid")
  done
  for pgid in "${pgids[@]}"; do kill -TERM -- "-$pgid" 2>/dev/null || true; done
  for _ in $(seq 50); do # up to 5 s for a clean exit
    local left=0
    for pgid in "${pgids[@]}"; do alive "$pgid" && left=1; done
    ((left)) || break
    sleep 0.1
  done
  local survivors=0
  for pgid in "${pgids[@]}"; do
    if alive "$pgid"; then
      kill -KILL -- "-$pgid" 2>/dev/null || true
      sleep 0.2
      if alive "$pgid"; then
        echo "emulators.sh: process group $pgid survived SIGKILL:" >&2
        ps -o pid=,args= -g "$pgid" >&2 || true
        survivors=1
      fi
    fi
  done
  rm -rf "$RUN_DIR"
  return "$survivors"
}

on_exit() {
  local rc=$?
  stop_all || rc=1
  exit "$rc"
}
# COMMAND runs in the foreground: Ctrl-C reaches it (and its children) directly, and bash runs
# these traps as soon as it has ended; the EXIT trap then stops the emulators.
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_group() { # NAME COMMAND...
  local name=$1
  shift
  NAMES+=("$name")
  # setsid: the emulator (and gcloud's Java child) get their own process group, whose id is
  # the pid `sh` writes before it execs the emulator.
  setsid sh -c 'echo $$ > "$0"; exec "$@"' "$RUN_DIR/$name.pid" "$@" >"$LOGS/$name.log" 2>&1 &
  BGPID[$name]=$!
  if [[ -n "${PHASEGATE_EMULATOR_PGIDS:-}" ]]; then
    for _ in $(seq 100); do [[ -s "$RUN_DIR/$name.pid" ]] && break; sleep 0.1; done
    group_of "$name" >>"$PHASEGATE_EMULATOR_PGIDS"
  fi
}

BQ_COUNT="${PHASEGATE_BQ_EMULATORS:-1}"
if [[ ! "$BQ_COUNT" =~ ^[1-9][0-9]*$ ]]; then
  echo "PHASEGATE_BQ_EMULATORS must be a positive integer, not '$BQ_COUNT'" >&2
  exit 2
fi
ensure_venv

ps_port='' fs_port='' bq_port='' bq_grpc='' model_port='' # set by free_port
free_port ps_port
start_group pubsub \
  gcloud beta emulators pubsub start --host-port="127.0.0.1:$ps_port" --project="$PROJECT" --quiet
# Firestore in Native mode (the default mode). Besides its API port it opens a WebSocket port
# of its own choosing (listeners; phasegate does not use it).
free_port fs_port
start_group firestore \
  gcloud emulators firestore start --host-port="127.0.0.1:$fs_port" --quiet
BQ_NAMES=()
BQ_HOSTS=()
MODEL_NAMES=()
MODEL_HOSTS=()
USE_MODEL="${PHASEGATE_BQ_MODEL:-1}"
for i in $(seq "$BQ_COUNT"); do
  name=bigquery
  ((i == 1)) || name="bigquery-$i"
  free_port bq_port
  free_port bq_grpc
  start_group "$name" \
    "$VENV/bin/bqemulator" start --project "$PROJECT" --rest-port "$bq_port" --grpc-port "$bq_grpc"
  BQ_NAMES+=("$name")
  BQ_HOSTS+=("127.0.0.1:$bq_port")
  if [[ "$USE_MODEL" != 0 ]]; then
    free_port model_port
    start_group "bqmodel-$i" \
      "$VENV/bin/python" scripts/bqmodel/model.py --port "$model_port" --upstream "127.0.0.1:$bq_port"
    MODEL_NAMES+=("bqmodel-$i")
    MODEL_HOSTS+=("127.0.0.1:$model_port")
  fi
done

wait_http "http://127.0.0.1:$ps_port/v1/projects/$PROJECT/topics" pubsub 90
wait_http "http://127.0.0.1:$fs_port/" firestore 90 # answers "Ok" once it serves
for i in "${!BQ_NAMES[@]}"; do
  wait_http "http://${BQ_HOSTS[$i]}/bigquery/v2/projects/$PROJECT/datasets" "${BQ_NAMES[$i]}" 90
done
for i in "${!MODEL_NAMES[@]}"; do
  wait_http "http://${MODEL_HOSTS[$i]}/bigquery/v2/projects/$PROJECT/datasets" "${MODEL_NAMES[$i]}" 30
done
if ((${#MODEL_HOSTS[@]})); then
  echo "== emulators up: Pub/Sub 127.0.0.1:$ps_port, Firestore 127.0.0.1:$fs_port, BigQuery model ${MODEL_HOSTS[*]} in front of bqemulator ${BQ_HOSTS[*]}"
  BQ_HOSTS=("${MODEL_HOSTS[@]}")
else
  echo "== emulators up: Pub/Sub 127.0.0.1:$ps_port, Firestore 127.0.0.1:$fs_port, BigQuery ${BQ_HOSTS[*]} (no model)"
fi

export PUBSUB_EMULATOR_HOST="127.0.0.1:$ps_port"
export FIRESTORE_EMULATOR_HOST="127.0.0.1:$fs_port"
export BIGQUERY_EMULATOR_HOST="${BQ_HOSTS[0]}"
export BIGQUERY_EMULATOR_HOSTS="${BQ_HOSTS[*]}"
export PHASEGATE_EMULATOR_PROJECT="$PROJECT"
export BIGQUERY_MODEL_HOSTS="${MODEL_HOSTS[*]}"
export BIGQUERY_MODEL_HOST="${MODEL_HOSTS[0]:-}"
"$@"
