#!/usr/bin/env bash
# Local development in one command: installs what it needs, then starts Azurite with every
# configured account, writes local.settings.json, runs the relay and prints how to write to
# the tables. Ctrl-C stops what it started. Options: `bash scripts/dev.sh --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m cli dev "$@"
