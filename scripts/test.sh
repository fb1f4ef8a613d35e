#!/usr/bin/env bash
# The test command: installs what it needs, then runs pytest. Azurite is started by the
# test session itself on free loopback ports and stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
