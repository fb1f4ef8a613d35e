#!/usr/bin/env bash
# Installs everything the tests and the demo need into this checkout: a virtualenv with the
# pinned Python packages, and Azurite from npm (pinned in package.json / package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
if [ ! -x node_modules/.bin/azurite-blob ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
