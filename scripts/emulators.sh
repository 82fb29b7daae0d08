#!/usr/bin/env bash
# Start Google's Pub/Sub emulator and bqemulator on free ports, run a command with their
# addresses in the environment, and always stop both (process groups, even on failure).
#
#   scripts/emulators.sh COMMAND [ARGS...]
#
# Exports to COMMAND: PUBSUB_EMULATOR_HOST, BIGQUERY_EMULATOR_HOST, PHASEGATE_EMULATOR_PROJECT.
# Creates the bqemulator venv in .venv on first use (pinned versions below).
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
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    bqemulator==1.4.0 duckdb==1.5.5 duckdb-extension-spatial==1.5.5 duckdb-extensions numpy
  # Offline, bqemulator refuses to start unless the spatial extension is installed.
  "$VENV/bin/python" -c "from duckdb_extensions import import_extension; import_extension('spatial')"
  touch "$VENV/.phasegate-ready"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
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

PGIDS=()
stop_all() {
  for pgid in "${PGIDS[@]}"; do
    kill -TERM -- "-$pgid" 2>/dev/null || true
  done
  sleep 1
  for pgid in "${PGIDS[@]}"; do
    kill -KILL -- "-$pgid" 2>/dev/null || true
  done
}
trap stop_all EXIT INT TERM

start_group() { # NAME PIDFILE COMMAND...
  local name=$1 pidfile=$2
  shift 2
  # setsid: the emulator (and gcloud's Java child) get their own process group.
  setsid sh -c 'echo $$ > "$0"; exec "$@"' "$pidfile" "$@" >"$LOGS/$name.log" 2>&1 &
  for _ in $(seq 50); do [[ -s "$pidfile" ]] && break; sleep 0.1; done
  PGIDS+=("$(cat "$pidfile")")
}

ensure_venv

ps_port=$(free_port)
bq_port=$(free_port)
bq_grpc=$(free_port)
start_group pubsub "$LOGS/pubsub.pid" \
  gcloud beta emulators pubsub start --host-port="127.0.0.1:$ps_port" --project="$PROJECT" --quiet
start_group bigquery "$LOGS/bigquery.pid" \
  "$VENV/bin/bqemulator" start --project "$PROJECT" --rest-port "$bq_port" --grpc-port "$bq_grpc"

wait_http "http://127.0.0.1:$ps_port/v1/projects/$PROJECT/topics" pubsub 90
wait_http "http://127.0.0.1:$bq_port/bigquery/v2/projects/$PROJECT/datasets" bigquery 90
echo "== emulators up: Pub/Sub 127.0.0.1:$ps_port, BigQuery 127.0.0.1:$bq_port"

export PUBSUB_EMULATOR_HOST="127.0.0.1:$ps_port"
export BIGQUERY_EMULATOR_HOST="127.0.0.1:$bq_port"
export PHASEGATE_EMULATOR_PROJECT="$PROJECT"
"$@"
