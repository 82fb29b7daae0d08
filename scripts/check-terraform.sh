#!/usr/bin/env bash
# Validate terraform/ without cloud access: structure (python-hcl2) and checkov.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PHASEGATE_VENV:-$PWD/.venv}"
if [[ ! -x "$VENV/bin/checkov" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check python-hcl2==7.3.1 checkov==3.3.30
fi
"$VENV/bin/python" scripts/check_terraform.py
"$VENV/bin/checkov" --directory terraform --framework terraform --quiet --compact --skip-download
