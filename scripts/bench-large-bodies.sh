#!/usr/bin/env bash
# Resident memory of `phasegate serve` under N concurrent ~9.9 MB push bodies, for R rounds.
# Each body is a well-formed envelope whose base64 `message.data` is ~7.4 MB of JSON (the
# worst case: it is decoded) and whose data_date is malformed, so it is refused with 400
# after being decoded in full.
# Prints the RSS before, the peak (VmHWM) and the RSS after, and how the pushes were answered.
#
#   scripts/bench-large-bodies.sh [N] [ROUNDS] [MAX_BUFFERED_BODY_MIB]   (default 40 3 128)
#   BIN=target/debug/phasegate scripts/bench-large-bodies.sh             (skip the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-40}"
rounds="${2:-3}"
budget="${3:-128}"
if [[ -z "${BIN:-}" ]]; then
  cargo build --release --locked --quiet
  BIN="$PWD/target/release/phasegate"
fi
work="$(mktemp -d)"
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
sed "s|^\[auth\]|[server]\nmax_buffered_body_mib = $budget\n\n[auth]|" examples/nba/pipeline.toml >"$work/pipeline.toml"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PHASEGATE_SQLITE_PATH="$work/bench.db" PORT="$port" RUST_LOG=error \
  "$BIN" --config "$work/pipeline.toml" serve --phase raw >/dev/null 2>"$work/serve.log" &
pid=$!
for _ in $(seq 200); do
  curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.05
done
rss() { awk -v k="$1:" '$1 == k { print int($2 / 1024) }' "/proc/$pid/status"; }
echo "phasegate serve: $n concurrent ~9.9 MB bodies x $rounds rounds, max_buffered_body_mib = $budget"
echo "RSS before: $(rss VmRSS) MiB"
python3 - "$port" "$n" "$rounds" <<'PY'
import base64, collections, http.client, json, sys, threading
port, n, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
payload = json.dumps({"data_date": "22/10/2024", "pad": "x" * 7_400_000}).encode()
body = json.dumps({"message": {"data": base64.b64encode(payload).decode(), "messageId": "big"},
                   "subscription": "s"}).encode()
answers = collections.Counter()
lock = threading.Lock()
def push():
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        c.request("POST", "/push", body=body, headers={"content-type": "application/json"})
        status = c.getresponse().status
    except Exception as e:
        status = type(e).__name__
    with lock:
        answers[status] += 1
for _ in range(rounds):
    threads = [threading.Thread(target=push) for _ in range(n)]
    for t in threads: t.start()
    for t in threads: t.join()
print(f"body {len(body) / 1e6:.1f} MB; answers: {dict(answers)}")
PY
echo "RSS peak (VmHWM): $(rss VmHWM) MiB"
echo "RSS after: $(rss VmRSS) MiB"
