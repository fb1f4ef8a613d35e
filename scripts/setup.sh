#!/usr/bin/env bash
# Installs everything the tests and the demo need into this checkout: a virtualenv with the
# pinned Python packages, and Azurite from npm (pinned in package.json / package-lock.json).
# Each step says what it does (a first run takes about a minute; later runs a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
started=$SECONDS
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating the virtualenv .venv ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv .venv
fi
echo "setup: installing Python packages from requirements-dev.txt into .venv (pip; nothing to do when present)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
if [ ! -x node_modules/.bin/azurite-blob ]; then
  echo "setup: installing Azurite from npm (npm ci, pinned in package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
else
  echo "setup: Azurite already installed in node_modules"
fi
echo "setup: ready in $((SECONDS - started)) s"
