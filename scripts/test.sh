#!/usr/bin/env bash
# Set up (if needed) and run the default test suite (fast tests; `-m slow` for the long ones).
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${LIFEVIT_VENV:-.venv}"
"$VENV/bin/python" -m pytest -q "$@"
