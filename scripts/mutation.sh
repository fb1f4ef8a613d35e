#!/usr/bin/env bash
# Mutation testing (mutmut) of the modules that hold the invariants; never part of the default run.
#
#   bash scripts/mutation.sh                      # every module below, one after the other
#   bash scripts/mutation.sh maintenance failover  # some of them
#   MUTATION_JOBS=1 MUTATION_ONLY='shared/maintenance/retention.py' bash scripts/mutation.sh maintenance
#
# Each module runs in its own work folder .mutation/<module>/ (a copy of the tree with a generated
# setup.cfg; mutmut writes its mutants/ there), against the fast tests that cover it (TESTS below);
# mutmut then runs, per mutant, only the tests that called the mutated function. A rerun resumes
# (results are cached per mutant); MUTATION_FRESH=1 starts over. Results: .mutation/<module>/results.txt
# (`mutmut results --all`), summarised in tests/MUTATION.md by hand, with every survivor explained.
#
# Every test session attaches to one Azurite this script starts (TEST_AZURITE); tests that start a
# second one (a region going down) keep its data folder under the work folder's tmp/; a mutant killed
# on timeout cannot stop it, so at the end the script stops the Azurite processes whose data folder
# is under that tmp/ (started by this run, found by that path alone).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
bash scripts/setup.sh >/dev/null
PY=$REPO/.venv/bin/python
MUTMUT=$REPO/.venv/bin/mutmut
JOBS=${MUTATION_JOBS:-2}
NICE=${MUTATION_NICE:-15}

# The fast tests covering each module (the slow SIGKILL and randomized scenarios are left out: a
# full run must fit in an hour on 2 cores).
GAPS=tests/test_mutation_gaps.py
declare -A TESTS=(
  [replication]="$GAPS::test_catch_up_writes_no_commit_above_the_head_until_every_file_of_the_batch_is_copied
                 $GAPS::test_a_commit_write_failing_in_a_catch_up_leaves_no_gap
                 $GAPS::test_a_foreign_commit_at_the_event_version_is_reported_diverged
                 $GAPS::test_an_event_naming_an_unusable_version_takes_no_lease
                 tests/test_replicator.py tests/test_event_order.py tests/test_hot_path.py
                 tests/test_rejected_inputs.py tests/test_readable_first.py tests/test_events.py
                 tests/test_tuning_and_deadline.py::test_a_catch_up_of_many_batches_reads_each_next_batch_ahead_and_writes_every_version_in_order
                 tests/test_fence.py::test_the_write_fence_refuses_a_new_epoch_under_the_same_primary_and_any_other_primary_when_the_epoch_is_unknown"
  [maintenance]="$GAPS::test_mirror_retention_keeps_every_file_the_replica_head_reads
                 tests/test_retention.py tests/test_retention_policy.py tests/test_purge.py tests/test_snapshots.py
                 tests/test_maintenance_lineage.py"
  [failover]="$GAPS::test_rejoin_refuses_a_quarantine_copy_of_the_same_size_with_other_bytes
              tests/test_topology.py tests/scenarios/test_failover.py tests/test_fence.py tests/test_topology_missing.py
              tests/scenarios/test_write_fence.py tests/scenarios/test_quarantine_replay.py tests/test_groups_failover.py"
  [consolidation]="$GAPS::test_consolidation_commits_rows_and_their_source_version_together
                   tests/test_consolidation.py tests/scenarios/test_consolidation_faults.py
                   tests/test_consolidation_identity.py"
  [storage]="$GAPS::test_streaming_copy_memory_does_not_grow_with_the_file_size
             tests/test_hot_path.py tests/test_rejected_inputs.py tests/test_event_order.py
             tests/test_hardening.py tests/test_secrets.py tests/test_store_conformance.py tests/test_storage_errors.py
             tests/test_lease.py"
)
MODULES=(replication maintenance failover consolidation storage)
[ "$#" -gt 0 ] && MODULES=("$@")

for module in "${MODULES[@]}"; do
  if [ -z "${TESTS[$module]:-}" ]; then
    echo "unknown module '$module'; expected one of: ${!TESTS[*]}" >&2
    exit 2
  fi
done

# One Azurite (blob and table, the suite's accounts) for every mutant's test session: tests/conftest.py
# attaches to it through TEST_AZURITE instead of starting its own (each test's containers and tables
# are uniquely named). Started here, stopped at exit by its PID.
mkdir -p "$REPO/.mutation"
PORTS=$REPO/.mutation/azurite.ports
rm -f "$PORTS"
"$PY" -m devtools.azurite "$PORTS" eastus,westeu,seasia,global &
AZURITE_PID=$!
trap 'kill "$AZURITE_PID" 2>/dev/null || true; wait "$AZURITE_PID" 2>/dev/null || true' EXIT
for _ in $(seq 300); do [ -s "$PORTS" ] && break; sleep 0.1; done
[ -s "$PORTS" ] || { echo "the shared Azurite did not start" >&2; exit 1; }
export TEST_AZURITE=$(cat "$PORTS")

stop_own_azurite() {  # Azurite processes whose data folder is under this run's tmp/ (ours alone)
  local tmp=$1 pid
  for pid in $(pgrep -f -- "--location $tmp/" || true); do
    kill "$pid" 2>/dev/null || true
  done
}

for module in "${MODULES[@]}"; do
  work=$REPO/.mutation/$module
  [ "${MUTATION_FRESH:-0}" = 1 ] && rm -rf "$work"
  mkdir -p "$work/tmp"
  # The tree mutmut copies from (it mutates shared/, and copies what the tests import next to it).
  for part in shared tests devtools cli functions bench; do
    rm -rf "${work:?}/$part"
    cp -r "$part" "$work/$part"
  done
  cp function_app.py pytest.ini host.json "$work/"
  find "$work" -name __pycache__ -prune -exec rm -rf {} +
  # Azurite is found next to the code (devtools/azurite.py): link the shared install into both trees.
  mkdir -p "$work/mutants"
  ln -sfn "$REPO/node_modules" "$work/node_modules"
  ln -sfn "$REPO/node_modules" "$work/mutants/node_modules"
  only=${MUTATION_ONLY:-shared/$module/*}
  {
    echo "[mutmut]"
    echo "source_paths = shared"
    echo "only_mutate ="
    for pattern in $only; do echo "    $pattern"; done
    echo "also_copy ="
    for part in devtools cli functions bench function_app.py pytest.ini host.json; do echo "    $part"; done
    echo "pytest_add_cli_args_test_selection ="
    for t in ${TESTS[$module]}; do echo "    $t"; done
    # Wall-clock limit per mutant: (the covering tests' time + 10 s) x 3, so a mutant that makes a
    # test wait out a lease or a failpoint is a timeout, not an hour-long stall, while a busy
    # machine starting Azurite for a 1-second test is not (tests/conftest.py stops a timed-out
    # test process's Azurite).
    echo "timeout_multiplier = 3"
    echo "timeout_constant = 10"
    # Workers fork from a server that never ran a test: deltalake's tokio runtime, once made in the
    # process that ran the stats, panics in every forked child ("Forked process detected"), and mutmut
    # counted each such crash as a kill (1,864 of 1,864 "killed" in 0.33 s each, 2026-12-06).
    echo "process_isolation = forkserver"
    echo "forkserver_warmup = collect"
  } > "$work/setup.cfg"
  echo "== mutation: $module ($only) with ${JOBS} worker(s) =="
  started=$(date +%s)
  status=0
  (cd "$work" && TMPDIR=$work/tmp nice -n "$NICE" "$MUTMUT" run --max-children "$JOBS") || status=$?
  stop_own_azurite "$work/tmp"
  (cd "$work" && "$MUTMUT" results --all true > results.txt 2>&1) || (cd "$work" && "$MUTMUT" results > results.txt 2>&1) || true
  (cd "$work" && "$MUTMUT" export-cicd-stats >/dev/null 2>&1) || true
  echo "== $module: exit $status after $(( $(date +%s) - started )) s; results in $work/results.txt"
  [ -f "$work/mutants/mutmut-cicd-stats.json" ] && cat "$work/mutants/mutmut-cicd-stats.json" && echo
done
