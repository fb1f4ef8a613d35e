#!/usr/bin/env bash
# The requirements-only check (run by scripts/test.sh before the suite): a virtualenv built from
# requirements.txt alone, as a deployment builds it, runs the deployment zip (scripts/package.sh):
# import function_app, the function index, one replication and one consolidation on a private Azurite.
# The environment is cached in .venv-deploy and rebuilt from scratch whenever requirements.txt (or the
# Python version) changes, so a package deleted from requirements.txt is really gone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv-deploy
STAMP="$("$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(open("requirements.txt","rb").read()).hexdigest(), sys.version.split()[0])')"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements-stamp" 2>/dev/null)" != "$STAMP" ]; then
  echo "deploy check: building $VENV from requirements.txt alone"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$STAMP" > "$VENV/.requirements-stamp"
fi
if [ ! -x node_modules/.bin/azurite-blob ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
bash scripts/package.sh "$WORK/function-app.zip" >/dev/null
"$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$WORK/function-app.zip" "$WORK/app"
# -I: no PYTHONPATH, no user site, no script directory: only the zip's contents and .venv-deploy.
"$VENV/bin/python" -I scripts/deploy_check.py "$WORK/app"
echo "deploy check: ok"
