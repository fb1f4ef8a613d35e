"""Region failover and failback on Azurite: planned switchover, unplanned failover with quarantine,
replay, and SIGKILL at each rejoin step. Each location is its own account; the primary (eastus)
runs in its own Azurite process where the scenario stops it."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time

import pytest
from deltalake.exceptions import CommitFailedError

from devtools.azurite import AzuriteProcess
from shared.failover import rejoin as rejoin_module
from shared.failover.promote import promote
from shared.failover.rejoin import (
    REJOIN_CATCH_UP,
    REJOIN_COPIED,
    REJOIN_REMOVED,
    rejoin,
)
from shared.maintenance.retention import apply_retention
from shared.app.commit_event import EventDisposition
from tests.scenarios.test_crash_injection import REPO
from tests.support.failover import (
    LineageReader,
    deliver_new,
    events_of,
    failover_lake,
    version_rows,
    write_to,
)
from tests.support.lake import batch, rows
from tests.test_cli import run_cli


def commit_names(lake, account) -> list[str]:
    return [n for n in lake.log_names(account) if re.fullmatch(r"\d{20}\.json", n)]


def assert_same_log(lake, a: str, b: str) -> None:
    """Byte-identical commits at every version (so equal tables at every version), equal rows at the head."""
    assert commit_names(lake, a) == commit_names(lake, b)
    for name in commit_names(lake, a):
        assert lake.blob_bytes(a, f"_delta_log/{name}") == lake.blob_bytes(b, f"_delta_log/{name}"), name
    assert rows(lake.table(a).to_pyarrow_table()) == rows(lake.table(b).to_pyarrow_table())


def ids(lake, account) -> list[int]:
    return sorted(lake.table(account).to_pyarrow_table().column("id").to_pylist())


def test_planned_switchover_loses_nothing_and_fences_the_old_primary(azurite, request, caplog):
    lake = failover_lake(azurite, request.node.name)
    name = lake.table_name
    seen_east, seen_west = set(), set()
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        for i in range(1, 4):
            lake.write(batch(i * 5, 5), partition_by=["region"])
        deliver_new(lake, "eastus", seen_east)
        for i in range(4, 7):  # the writer's last commits: no events delivered yet, westeu lags
            lake.write(batch(i * 5, 5), partition_by=["region"])
        assert lake.head("westeu") == 3 and lake.head("eastus") == 6
        # The writer has stopped. Planned promote: catches westeu up, then flips.
        result = run_cli(lake, "promote", "--table", name, "--to", "westeu", "--timeout", "60")
        assert result.returncode == 0, result.stderr
        assert f"promoted {name}: primary westeu (was eastus), epoch 1, at version 6" in result.stdout
        assert "fenced eastus at version 7: writers there are refused, readers still read" in result.stdout
        topology = lake.runtime.topology(name)
        assert (topology.primary, topology.epoch, topology.promoted_at_version) == ("westeu", 1, 6)
        # No version lost: westeu holds eastus's log; eastus has one more commit, the fence.
        assert commit_names(lake, "eastus") == commit_names(lake, "westeu") + [f"{7:020d}.json"]
        for name_ in commit_names(lake, "westeu"):
            assert lake.blob_bytes("eastus", f"_delta_log/{name_}") == lake.blob_bytes("westeu", f"_delta_log/{name_}")
        # The fenced old primary refuses a deltalake write and still serves reads.
        with pytest.raises(CommitFailedError, match=r'Unsupported table features required: \[Unknown\("delta-replication-fenced"\)\]'):
            lake.write(batch(500, 5), partition_by=["region"])
        with pytest.raises(CommitFailedError, match="delta-replication-fenced"):
            lake.table().delete("id = 1")
        assert lake.table().version() == 7
        assert rows(lake.table().to_pyarrow_table()) == rows(lake.table("westeu").to_pyarrow_table())
        # Writers repointed with purpose=write: the resolver answers westeu now.
        endpoint = run_cli(lake, "endpoint", "--table", name, "--purpose", "write", "--json")
        assert endpoint.returncode == 0, endpoint.stderr
        assert json.loads(endpoint.stdout)["location"] == "westeu"
        for i in range(7, 10):
            write_to(lake, "westeu", batch(i * 5, 5), partition_by=["region"])
        results = deliver_new(lake, "westeu", seen_west)
        assert {r.disposition for r in results} == {EventDisposition.HANDLED}
        assert lake.head("seasia") == lake.head("westeu") == 9
        assert_same_log(lake, "westeu", "seasia")
        # Writers repointed: rejoin removes the fence (quarantined, nothing to replay) and eastus follows.
        done = run_cli(lake, "rejoin", "--table", name, "--location", "eastus", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert (report["quarantinedVersions"], report["fenceVersions"], report["headAfter"]) == ([7], [7], 9)
        assert_same_log(lake, "westeu", "eastus")
        listed = json.loads(run_cli(lake, "quarantine", "list", "--table", name, "--json").stdout)
        assert [(c["version"], c["operation"], c["fence"]) for c in listed] == [(7, "REPLICATION FENCE", True)]
        replayed = json.loads(run_cli(lake, "quarantine", "replay", "--table", name, "--epoch", "1", "--json").stdout)
        assert (replayed["applied"], replayed["fences"], replayed["needsReview"]) == ([], [7], [])
        # A late or stray event from eastus's log is fenced: nothing copied, one WARNING.
        caplog.set_level(logging.WARNING)
        caplog.clear()
        before = lake.blobs("seasia")
        fenced = lake.deliver(events_of(lake, "eastus")[-1])
        assert fenced.disposition == EventDisposition.FENCED
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and warnings[0].startswith(f"event.fenced table={name} location=eastus "
                                                               "primary=westeu epoch=1 ")
        assert lake.blobs("seasia") == before
        # Retention follows the topology: westeu (now primary) is the reference, never a replica;
        # eastus (now a replica, no retention block of its own) mirrors it.
        westeu_before = lake.blobs("westeu")
        results = apply_retention(lake.runtime)
        assert sorted(r.replica for r in results) == ["eastus", "seasia"]
        assert lake.blobs("westeu") == westeu_before
    finally:
        lake.close()


def test_unplanned_failover_quarantines_outage_writes_and_replays_them_once(azurite, request):
    primary = AzuriteProcess(("eastus",)).start()
    lake = failover_lake(azurite, request.node.name, primary_process=primary)
    name = lake.table_name
    seen_east, seen_west = set(), set()
    try:
        t0 = time.monotonic()
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        failed_at = None
        for i in range(1, 21):  # a 20-commit burst; eastus's region goes down in the middle
            if i == 13:
                primary.stop()
            try:
                lake.write(batch(i * 5, 5), partition_by=["region"])
            except Exception:  # noqa: BLE001 - the writer sees its region fail
                failed_at = i
                break
            deliver_new(lake, "eastus", seen_east)
        print(f"burst done {time.monotonic() - t0:.1f}s")
        assert failed_at == 13 and lake.head("westeu") == 12
        result = run_cli(lake, "promote", "--table", name, "--to", "westeu", "--force", "--json")
        assert result.returncode == 0, result.stderr
        promoted = json.loads(result.stdout)
        assert promoted["primary"] == "westeu" and promoted["epoch"] == 1 and promoted["promotedAtVersion"] == 12
        assert promoted["oldPrimaryVersionsBeyondPromotion"] == "unknown"
        print(f"promoted {time.monotonic() - t0:.1f}s")
        # The writer continues on westeu for 10 commits; seasia follows westeu.
        for i in range(13, 23):
            write_to(lake, "westeu", batch(i * 5, 5), partition_by=["region"])
        # One delivery brings every reachable replica to westeu's head (each event means "at least
        # version N"); eastus's failures are retryable, as Event Grid would keep retrying them.
        last = events_of(lake, "westeu")
        seen_west.update(e["subject"] for e in last)
        (outcome_east, outcome_seasia) = sorted(lake.deliver(last[-1]).outcomes, key=lambda o: o.replica)
        assert outcome_east.retryable and outcome_seasia.error is None
        assert lake.head("seasia") == lake.head("westeu") == 22
        # eastus comes back, holding 3 commits a forgotten writer made during the outage.
        print(f"outage writes done {time.monotonic() - t0:.1f}s")
        primary.start()
        for k in range(3):
            lake.write(batch(9000 + k * 5, 5), partition_by=["region"])
        assert lake.head("eastus") == 15
        assert {lake.deliver(e).disposition for e in events_of(lake, "eastus", start_after=
                f"{lake.table_path}/_delta_log/{12:020d}.json")} == {EventDisposition.FENCED}
        outage = version_rows(lake, "eastus")
        outage[16] = outage[15]  # rejoin fences eastus first: the fence changes no rows
        new_lineage = version_rows(lake, "westeu")
        dry = run_cli(lake, "rejoin", "--table", name, "--location", "eastus", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "would quarantine versions [13, 14, 15]" in dry.stdout
        assert lake.head("eastus") == 15
        with LineageReader(lake, "eastus", [outage, new_lineage]) as reader:
            done = run_cli(lake, "rejoin", "--table", name, "--location", "eastus", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        # Rejoin fenced eastus first (it answers now), so the fence (16) is quarantined with the outage commits.
        assert report["quarantinedVersions"] == [13, 14, 15, 16] and report["headAfter"] == 22
        assert report["fenceVersions"] == [16]
        print(f"rejoined {time.monotonic() - t0:.1f}s")
        reader.observe_once()
        assert reader.torn == [] and len(reader.observations) > 1
        assert_same_log(lake, "westeu", "eastus")
        # The quarantine holds exactly those 3 commits and their files, verified.
        quarantine = {n for n in lake.blobs("eastus") if n.startswith(f"_quarantine/{lake.table_path}/epoch-1/")}
        manifest = json.loads(lake.clients["eastus"].get_blob_client(
            lake.container, f"_quarantine/{lake.table_path}/epoch-1/quarantine.json").download_blob().readall())
        assert manifest["versions"] == [13, 14, 15, 16] and manifest["fences"] == [16]
        assert {n for n in manifest["logFiles"] if n.endswith(".json")} == {f"{v:020d}.json" for v in (13, 14, 15, 16)}
        assert len(manifest["dataFiles"]) == 15 and len(manifest["verified"]) == len(manifest["logFiles"]) + 15
        for path in manifest["verified"]:
            assert f"_quarantine/{lake.table_path}/epoch-1/{path}" in quarantine
        listed = run_cli(lake, "quarantine", "list", "--table", name, "--json")
        assert [(c["version"], c["operation"], c["rowsAdded"], c["filesAdded"], c["blindAppend"], c["fence"])
                for c in json.loads(listed.stdout)] == [(v, "WRITE", 5, 5, True, False) for v in (13, 14, 15)] + \
            [(16, "REPLICATION FENCE", 0, 0, False, True)]
        for attempt in range(2):
            replayed = run_cli(lake, "quarantine", "replay", "--table", name, "--epoch", "1", "--json")
            assert replayed.returncode == 0, replayed.stderr
            out = json.loads(replayed.stdout)
            assert (out["applied"], out["alreadyApplied"]) == (([13, 14, 15], []) if attempt == 0 else ([], [13, 14, 15]))
        outage_ids = list(range(9000, 9015))
        west_ids = ids(lake, "westeu")
        assert [i for i in west_ids if i >= 9000] == outage_ids  # each outage row exactly once
        assert len(west_ids) == len(set(west_ids)) == 5 * 23 + 15
        deliver_new(lake, "westeu", seen_west)
        assert_same_log(lake, "westeu", "eastus")
        assert_same_log(lake, "westeu", "seasia")
    finally:
        if not primary.running:
            primary.start()
        lake.close()
        primary.close()


def run_rejoin_worker(lake, failpoint: str, after: int) -> int:
    job = {"config": lake.config_doc, "environ": lake.environ, "failpoint": failpoint, "after": after,
           "rejoin": {"table": lake.table_name, "location": "eastus"}}
    proc = subprocess.run([sys.executable, "-m", "tests.support.crash_worker"], input=json.dumps(job), text=True,
                          cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == -9, f"the failpoint {failpoint} was not reached: {proc.stderr[-2000:]}"
    return proc.returncode


@pytest.mark.parametrize("failpoint, after", [
    pytest.param(REJOIN_COPIED, 1, marks=pytest.mark.slow), (REJOIN_REMOVED, 2),
    pytest.param(REJOIN_CATCH_UP, 1, marks=pytest.mark.slow)],
                         ids=["after-copying", "mid-removal", "before-catch-up"])
def test_sigkill_at_each_rejoin_step_then_rerun_converges(azurite, request, failpoint, after):
    lake = failover_lake(azurite, request.node.name)
    name = lake.table_name
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        for i in range(1, 4):
            lake.write(batch(i * 5, 5), partition_by=["region"])
        lake.table().create_checkpoint()
        deliver_new(lake, "eastus", set())
        for k in range(3):  # outage writes on eastus, one with a checkpoint (and _last_checkpoint) beyond
            lake.write(batch(9000 + k * 5, 5), partition_by=["region"])
        lake.table().create_checkpoint()
        promote(lake.runtime, name, "westeu", force=True)  # eastus answers: fenced at version 7
        for i in range(4, 6):
            write_to(lake, "westeu", batch(i * 5, 5), partition_by=["region"])
        deliver_new(lake, "westeu", set())
        outage = version_rows(lake, "eastus")
        with LineageReader(lake, "eastus", [outage, version_rows(lake, "westeu")]) as reader:
            run_rejoin_worker(lake, failpoint, after)
            result = rejoin(lake.runtime, name, "eastus")  # the rerun; waits out the dead worker's leases
        assert reader.torn == []
        assert result.versions == [4, 5, 6, 7] and result.fences == [7] and result.head_after == 5
        assert_same_log(lake, "westeu", "eastus")
        store = rejoin_module.quarantine_store(lake.runtime, lake.runtime.config.table(name).location("eastus"), 1)
        manifest = rejoin_module.read_manifest(store)
        assert manifest["versions"] == [4, 5, 6, 7]
        assert f"{6:020d}.checkpoint.parquet" in manifest["logFiles"]
        for path, want in manifest["verified"].items():
            assert store.file_size(path) == want["size"]
        # Nothing lost: the 3 outage commits' rows are all in the quarantine.
        from shared.failover.replay import list_quarantine

        assert [(c.version, c.rows_added, c.fence) for c in list_quarantine(lake.runtime, name)] == \
            [(4, 5, False), (5, 5, False), (6, 5, False), (7, 0, True)]
    finally:
        lake.close()


def test_rejoin_after_two_failovers_quarantines_each_deposed_lineage(azurite, request):
    """westeu promoted at v2 while eastus holds outage commits v3-v4; seasia promoted at v5 while
    westeu holds its own outage commit v6. Both rejoin; eastus's v3-v4 are quarantined (epoch 1),
    westeu's v6 (epoch 2), and every outage row is replayable."""
    lake = failover_lake(azurite, request.node.name)
    name = lake.table_name
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        for i in range(1, 3):
            lake.write(batch(i * 5, 5), partition_by=["region"])
        deliver_new(lake, "eastus", set())
        for k in range(2):  # eastus's outage commits v3-v4: their events never arrive
            lake.write(batch(9000 + k * 5, 5), partition_by=["region"])
        first = promote(lake.runtime, name, "westeu", force=True)
        assert (first.topology.epoch, first.topology.promoted_at_version) == (1, 2)
        for i in range(3, 6):
            write_to(lake, "westeu", batch(i * 5, 5), partition_by=["region"])
        deliver_new(lake, "westeu", set())
        assert lake.head("seasia") == 5
        write_to(lake, "westeu", batch(8000, 5), partition_by=["region"])  # westeu's outage commit v6
        second = promote(lake.runtime, name, "seasia", force=True)
        assert (second.topology.epoch, second.topology.promoted_at_version, second.topology.previous_primary) == \
            (2, 5, "westeu")
        for i in range(6, 8):
            write_to(lake, "seasia", batch(i * 5, 5), partition_by=["region"])
        west = rejoin(lake.runtime, name, "westeu")
        east = rejoin(lake.runtime, name, "eastus")
        # Each promote fenced its old primary (both answered): the fences are quarantined too.
        assert (west.epoch, west.promoted_at_version, west.versions, west.fences) == (2, 5, [6, 7], [7])
        assert (east.epoch, east.promoted_at_version, east.versions, east.fences) == (1, 2, [3, 4, 5], [5])
        assert east.head_after == west.head_after == lake.head("seasia") == 7
        assert_same_log(lake, "seasia", "eastus")
        assert_same_log(lake, "seasia", "westeu")
        from shared.failover.replay import list_quarantine, replay

        appends = [(c.location, c.epoch, c.version, c.rows_added) for c in list_quarantine(lake.runtime, name)
                   if c.blind_append]
        assert appends == [("eastus", 1, 3, 5), ("eastus", 1, 4, 5), ("westeu", 2, 6, 5)]
        assert replay(lake.runtime, name, 1).applied == [3, 4]
        assert replay(lake.runtime, name, 2).applied == [6]
        seasia_ids = ids(lake, "seasia")
        assert [i for i in seasia_ids if i >= 8000] == list(range(8000, 8005)) + list(range(9000, 9010))
        # The topology kept every promotion beside the current row.
        history = lake.runtime.topology_store().history(lake.runtime.config.table(name))
        assert [(h.epoch, h.primary, h.promoted_at_version, h.previous_primary) for h in history] == \
            [(1, "westeu", 2, "eastus"), (2, "seasia", 5, "westeu")]
    finally:
        lake.close()
