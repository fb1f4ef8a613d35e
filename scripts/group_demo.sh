#!/usr/bin/env bash
# The group demo (issue 25): a database of 50+ tables replicated, measured and failed over as one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
exec .venv/bin/python -m devtools.group_demo
