#!/usr/bin/env bash
# One command for the benchmarks: installs what they need (the test setup, matplotlib,
# rclone from Debian's packages), then runs them (the replication benchmark, then the
# consolidation one; `bench/run.sh consolidation [--quick]` runs only the latter). Figures land in bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
if ! command -v rclone >/dev/null; then
  (apt-get install -y -q rclone || (apt-get update -q && apt-get install -y -q rclone)) >/dev/null
fi
if [[ "${1:-}" == "consolidation" ]]; then
  shift
  exec .venv/bin/python -m bench.consolidation "$@"  # bench/run.sh consolidation [--quick]
fi
.venv/bin/python -m bench "$@"
.venv/bin/python -m bench.report  # bench/RESULTS.md and its plots from bench/out/results.json
quick=()
for arg in "$@"; do if [[ "$arg" == "--quick" ]]; then quick=(--quick); fi; done
.venv/bin/python -m bench.consolidation "${quick[@]}"
if [[ ${#quick[@]} -eq 0 ]]; then
  .venv/bin/python -m bench.groups  # 1,000 tables in one group (bench/groups_results.md)
  .venv/bin/python -m bench.cpu  # CPU per commit, both storage clients, profiled (bench/cpu_results.md)
  .venv/bin/python -m bench.catchup_memory  # peak RSS of a catch-up at two lags (bench/out/catchup_memory.json)
  .venv/bin/python -m bench.report
fi
