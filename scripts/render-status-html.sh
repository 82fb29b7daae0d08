#!/usr/bin/env bash
# Render `phasegate status --output html` for the NBA example to a PNG with headless Chromium
# (no network): a sample season through the daily cascade, with its missing and corrupt feed
# and the last days not yet run, so every colour of the calendar shows up.
#
#   scripts/render-status-html.sh [OUT.png]     (default docs/status-calendar.png)
#
# Needs `chromium` (Debian: apt-get install chromium). PHASEGATE_BIN overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/status-calendar.png}"
if [[ -z "${PHASEGATE_BIN:-}" ]]; then
  cargo build --locked --quiet
  PHASEGATE_BIN="$PWD/target/debug/phasegate"
fi
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[[ -n "$browser" ]] || { echo "chromium not found (apt-get install chromium)" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PHASEGATE_CONFIG="$PWD/examples/nba/pipeline.toml" PHASEGATE_SQLITE_PATH="$work/status.db"
from=2025-10-21 days=28 run_days=24
to=$(date -d "$from + $((days - 1)) days" +%F)

"$PHASEGATE_BIN" sample-data --from "$from" --days "$days" >/dev/null
for i in $(seq 0 $((run_days - 1))); do
  # Each day's trigger; the in-process bus runs the cascade. Failures and blocks are the point.
  "$PHASEGATE_BIN" run --phase raw --date "$(date -d "$from + $i days" +%F)" >/dev/null || true
done
"$PHASEGATE_BIN" status --from "$from" --to "$to" --output html >"$work/status.html"

mkdir -p "$(dirname "$out")"
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --no-first-run --hide-scrollbars --window-size=1000,400 \
  --screenshot="$(realpath -m "$out")" "file://$work/status.html" >/dev/null 2>&1
echo "wrote $out"
