#!/usr/bin/env bash
# The test command: installs what it needs, then runs pytest (two workers by default).
# Each test session starts its own Azurite on free loopback ports and stops it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -eq 0 ]; then
  # The whole suite (CI): first the deployed app, built from requirements.txt alone.
  if [ "${SKIP_DEPLOY_CHECK:-}" != "1" ]; then
    bash scripts/deploy_check.sh
  fi
  set -- -n 2 --durations=25  # the slowest tests listed: the suite must stay under 20 minutes on 2 cores
fi
exec .venv/bin/python -m pytest "$@"
