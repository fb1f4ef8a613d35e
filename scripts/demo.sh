#!/usr/bin/env bash
# The demo: installs what it needs, starts its own Azurite, writes a Delta table and
# replicates it to two regions, checking rows at every version. Stops Azurite at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m devtools.demo "$@"
