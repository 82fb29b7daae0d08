#!/usr/bin/env bash
# Validate terraform/ without cloud access: structure (python-hcl2) and checkov.
set -euo pipefail
cd "$(dirname "$0")/.."
# A venv of its own: checkov's dependencies must not disturb bqemulator's.
VENV="${PHASEGATE_TOOLS_VENV:-$PWD/.venv-tools}"
if [[ ! -x "$VENV/bin/checkov" || ! -f "$VENV/.phasegate-ready" ]]; then
  echo "== creating $VENV (checkov, python-hcl2)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check python-hcl2==7.3.1 checkov==3.3.30
  touch "$VENV/.phasegate-ready"
fi
"$VENV/bin/python" scripts/check_terraform.py
"$VENV/bin/checkov" --directory terraform --framework terraform --quiet --compact --skip-download
