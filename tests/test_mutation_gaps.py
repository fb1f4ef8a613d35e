"""Tests for behaviours a mutation probe found unguarded (issue 21): each names the invariant,
and each was seen failing on the mutant that breaks it (tests/MUTATION.md lists the mutations).

Races that loopback Azurite always wins (copies finishing before anything else) are made
deterministic with failpoints, as the crash tests do, never with sleeps.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient
from deltalake import DeltaTable

from devtools.events import blob_created_event
from shared import failpoints
from shared.errors import CommitIncomplete
from shared.maintenance.retention import apply_replica_retention
from shared.replication.outcome import ReplicaState
from shared.storage.lease import LOCKS_CONTAINER, location_lease_name
from tests.support.lake import Lake, batch, commit_actions, rows
from tests.support.regions import Regions, orders

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _disarmed():
    yield
    failpoints.disarm_all()


def commit_versions(lake: Lake, account: str) -> list[int]:
    return sorted(int(n[:20]) for n in lake.log_names(account) if re.fullmatch(r"\d{20}\.json", n))


def outcome_of(outcomes, replica: str):
    return next(o for o in outcomes if o.replica == replica)


# -- replication ----------------------------------------------------------------------------

def test_catch_up_writes_no_commit_above_the_head_until_every_file_of_the_batch_is_copied(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.deliver_all(lake.events())
    for i in range(1, 4):
        lake.write(batch(i * 10, 5), partition_by=["region"])
    replicator = lake.runtime.replicator("sales")
    westeu = replicator.replicas["westeu"]
    source = replicator.source_log()
    files = {f.path for v in (1, 2, 3) for f in source.commit(v).files}
    held = source.commit(1).files[0].path
    assert len(files) == 15

    # westeu's copy of one file of version 1 is held until either every other file of the batch
    # was collected as copied (the catch-up now waits for the held one alone) or a commit was
    # written (it did not wait): whichever comes first, nothing else decides.
    release = threading.Event()
    copied = []
    at_release: list[list[int]] = []
    held_at_commit: list[tuple[int, bool]] = []

    def hold() -> None:
        assert release.wait(60), "neither the other copies nor a commit happened"
        at_release.append(commit_versions(lake, "westeu"))

    def collected() -> None:
        copied.append(1)
        if len(copied) == len(files) - 1:
            release.set()

    failpoints.arm(failpoints.FILE_COPYING, after=1, action=hold,
                   where={"location": westeu.location_key, "path": held})
    failpoints.arm_each(failpoints.FILE_COPIED, collected, where={"replica": "westeu"})
    failpoints.arm_each(failpoints.COMMIT_AFTER, release.set, where={"replica": "westeu"})
    failpoints.arm_each(failpoints.COMMIT_BEFORE,
                        lambda: held_at_commit.append((len(held_at_commit), westeu.file_size(held) is not None)),
                        where={"replica": "westeu"})
    outcomes = replicator.replicate(None)

    assert at_release == [[0]], "a commit above the starting head existed before the held copy was done"
    assert held_at_commit == [(0, True), (1, True), (2, True)]
    assert [(o.replica, o.state, o.head_after) for o in outcomes] == [
        ("westeu", ReplicaState.REPLICATED, 3), ("seasia", ReplicaState.REPLICATED, 3)]
    lake.assert_replicas_equal()


def test_a_commit_write_failing_in_a_catch_up_leaves_no_gap(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.deliver_all(lake.events())
    for i in range(1, 7):
        lake.write(batch(i * 10, 5), partition_by=["region"])
    replicator = lake.runtime.replicator("sales")

    def fail() -> None:
        raise RuntimeError("injected: writing version 3 fails")

    failpoints.arm(failpoints.COMMIT_BEFORE, after=1, action=fail, where={"replica": "westeu", "version": 3})
    outcome = outcome_of(replicator.replicate(None), "westeu")
    assert outcome.state == ReplicaState.ERROR and "injected" in str(outcome.error)
    # Versions are written in order: the failure stops the run at 2, with no later version.
    assert commit_versions(lake, "westeu") == [0, 1, 2]
    assert commit_versions(lake, "seasia") == list(range(7))
    failpoints.disarm_all()
    assert outcome_of(replicator.replicate(None), "westeu").state == ReplicaState.REPLICATED
    lake.assert_replicas_equal()


@pytest.mark.parametrize("version", [0, 2], ids=["version-0", "no-predecessor-on-the-replica"])
def test_a_foreign_commit_at_the_event_version_is_reported_diverged(lake, version):
    foreign = b'{"commitInfo":{"timestamp":1,"operation":"FOREIGN"}}\n'
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    if version:
        lake.deliver_all(lake.events())
    else:
        lake.clients["westeu"].create_container(lake.container)
    # Written straight into westeu, with no version before it there (version 0 has none at all).
    blob = f"{lake.table_path}/_delta_log/{version:020d}.json"
    lake.clients["westeu"].get_blob_client(lake.container, blob).upload_blob(foreign)
    for i in range(1, version + 1):
        lake.write(batch(i * 10, 5), partition_by=["region"])
    event = next(e for e in lake.events() if e["subject"].endswith(f"{version:020d}.json"))
    before = lake.blobs("westeu")
    log_before = lake.log_names("westeu")
    result = lake.deliver(event)
    states = {o.replica: o.state for o in result.outcomes}
    assert states == {"westeu": ReplicaState.DIVERGED, "seasia": ReplicaState.REPLICATED}
    error = str(outcome_of(result.outcomes, "westeu").error)
    assert f"version {version} with different content" in error and "diverged" in error
    # Nothing there changed and no log file was added (the hot path may have copied the event's
    # data files before it found the foreign commit: unreferenced, harmless).
    assert {k: v for k, v in lake.blobs("westeu").items() if k in before} == before
    assert lake.log_names("westeu") == log_before
    assert lake.blob_bytes("westeu", f"_delta_log/{version:020d}.json") == foreign


def test_an_event_naming_an_unusable_version_takes_no_lease(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.write(batch(5, 5), partition_by=["region"])
    lake.deliver_all(lake.events())
    replicator = lake.runtime.replicator("sales")
    host = BlobServiceClient.from_connection_string(lake.environ["AzureWebJobsStorage"])
    leases = [host.get_blob_client(LOCKS_CONTAINER, location_lease_name(*store.location_key))
              for store in replicator.replicas.values()]
    for lease in leases:  # seeding version 0 took each replica's lease; start from none
        lease.delete_blob()
    before = {a: lake.blobs(a) for a in ("westeu", "seasia")}
    # Version 2 is truncated on the primary; its `.crc` event names it (no commit event does:
    # those are rejected before any replica is looked at).
    container = lake.clients["eastus"].get_container_client(lake.container)
    container.upload_blob(f"{lake.table_path}/_delta_log/{2:020d}.json", b'{"commitInfo": {"timestamp": 1')
    crc = f"{lake.table_path}/_delta_log/{2:020d}.crc"
    container.upload_blob(crc, b'{"tableSizeBytes":1}')
    result = lake.deliver(blob_created_event("eastus", lake.container, crc, azurite_port=lake.azurite.port))
    assert [(o.replica, o.state, type(o.error)) for o in result.outcomes] == [
        ("westeu", ReplicaState.ERROR, CommitIncomplete), ("seasia", ReplicaState.ERROR, CommitIncomplete)]
    assert [lease.exists() for lease in leases] == [False, False]
    assert {a: lake.blobs(a) for a in ("westeu", "seasia")} == before


# -- retention ------------------------------------------------------------------------------

def test_mirror_retention_keeps_every_file_the_replica_head_reads(lake):
    zero = {"delta.deletedFileRetentionDuration": "interval 0 seconds",
            "delta.logRetentionDuration": "interval 30 days"}
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"], configuration=zero)
    lake.deliver_all(lake.events())
    at_v0 = rows(lake.table("westeu").to_pyarrow_table())
    v0_files = set(lake.table("westeu").file_uris())
    lake.write(batch(100, 5), mode="overwrite", partition_by=["region"])  # removes every file of v0
    time.sleep(1.2)  # deltalake compares deletion timestamps with its clock: older than the zero retention
    deleted = lake.table().vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False, full=True)
    assert len(deleted) == len(v0_files) == 5  # the primary no longer has any file westeu's head reads

    result = apply_replica_retention(lake.runtime.replicator("sales"), "westeu")
    assert commit_versions(lake, "westeu") == [0]
    assert rows(lake.table("westeu").to_pyarrow_table()) == at_v0
    assert (result.skipped, result.data_files, result.keep_from_version) == (None, [], 0)


# -- failover -------------------------------------------------------------------------------

def test_rejoin_refuses_a_quarantine_copy_of_the_same_size_with_other_bytes(azurite, request):
    from shared.errors import ReplicationError
    from shared.failover import rejoin as rejoin_module
    from shared.failover.promote import promote
    from tests.support.failover import deliver_new, failover_lake

    lake = failover_lake(azurite, request.node.name)
    name = lake.table_name
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        lake.write(batch(5, 5), partition_by=["region"])
        deliver_new(lake, "eastus", set())
        # An outage write: version 2, on eastus only (before the promote, which fences eastus since it answers).
        lake.write(batch(9000, 5), partition_by=["region"])
        promote(lake.runtime, name, "westeu", force=True)
        location = lake.runtime.config.table(name).location("eastus")
        qstore = rejoin_module.quarantine_store(lake.runtime, location, 1)
        before = lake.blobs("eastus")

        def corrupt() -> None:
            # Same size, other bytes: only a content check can tell.
            container = lake.clients["eastus"].get_container_client(lake.container)
            copies = [b.name for b in container.list_blobs(name_starts_with=f"{qstore.root}/")
                      if b.name.endswith(".parquet")]
            assert len(copies) == 5  # the outage commit's data files
            blob = container.get_blob_client(copies[0])
            data = bytearray(blob.download_blob().readall())
            data[len(data) // 2] ^= 0xFF
            blob.upload_blob(bytes(data), overwrite=True)

        failpoints.arm(rejoin_module.REJOIN_VERIFYING, after=1, action=corrupt, where={"location": "eastus"})
        with pytest.raises(ReplicationError, match="differs from the original"):
            rejoin_module.rejoin(lake.runtime, name, "eastus")
        # Nothing removed from the location, no manifest: the quarantine is not trusted.
        assert {k: v for k, v in lake.blobs("eastus").items() if k in before} == before
        assert rejoin_module.read_manifest(qstore) is None
        failpoints.disarm_all()
        result = rejoin_module.rejoin(lake.runtime, name, "eastus")  # the bad copy was dropped: a rerun converges
        assert (result.versions, result.fences) == ([2, 3], [3])  # the outage commit and the promote's fence
        assert rejoin_module.read_manifest(qstore)["versions"] == [2, 3]
    finally:
        lake.close()


# -- consolidation ---------------------------------------------------------------------------

def test_consolidation_commits_rows_and_their_source_version_together(azurite, request):
    regions = Regions(azurite, request.node.name, sources=[
        {"connection": "EASTUS_STORAGE", "container": "", "path": "orders", "region": "eastus"}])
    regions.config_doc["consolidations"][0]["sources"][0]["container"] = regions.container
    try:
        app_id = f"{regions.name}/eastus"
        seen = []

        def look() -> None:
            # Right after the MERGE returned: whatever it committed is all a crash here would leave.
            target = regions.target()
            seen.append((target.transaction_version(app_id), target.to_pyarrow_table().num_rows))

        failpoints.arm_each(failpoints.CONSOLIDATION_MERGED, look)
        regions.write("eastus", orders("eastus", range(0, 5)))
        regions.run()
        regions.write("eastus", orders("eastus", range(5, 12)))
        regions.write("eastus", orders("eastus", range(12, 15)))
        regions.run()
        assert seen == [(0, 5), (2, 15)]
        # Every target commit that adds rows records the source version they bring it to.
        log_dir = "orders_global/_delta_log/"
        container = regions.clients["global"].get_container_client(regions.container)
        merges = []
        for blob in container.list_blobs(name_starts_with=log_dir):
            if re.fullmatch(r"\d{20}\.json", blob.name[len(log_dir):]):
                actions = commit_actions(container.download_blob(blob.name).readall())
                if any("add" in a for a in actions):
                    merges.append(sorted(a["txn"]["version"] for a in actions
                                         if "txn" in a and a["txn"]["appId"] == app_id))
        assert merges == [[0], [2]]
    finally:
        regions.close()


# -- storage --------------------------------------------------------------------------------

_COPY_AND_MEASURE = """
import json, sys, tracemalloc
from shared.config.settings import resolve_connection
from shared.storage.blob_table_store import BlobTableStore
from shared.storage.clients import build_blob_service_client
job = json.load(sys.stdin)
def store(account):
    service = build_blob_service_client(resolve_connection(account.upper() + "_STORAGE", job["environ"]))
    return BlobTableStore(service, job["container"], "t", label=account, connection_name=account.upper())
dst, src = store("westeu"), store("eastus")
tracemalloc.start()
copied = dst.copy_log_file_from(src, job["name"])
print(json.dumps({"copied": copied, "peak_bytes": tracemalloc.get_traced_memory()[1]}))
"""


def test_streaming_copy_memory_does_not_grow_with_the_file_size(lake):
    """A log file (checkpoint) copy streams one block at a time: the peak memory a copy of 96 MiB
    allocates is that of a copy of 24 MiB. Measured with tracemalloc in a process of its own (no
    other test's threads; RSS is no measure there: a child's peak RSS starts at its parent's)."""
    mib = 1024 * 1024
    peaks = {}
    for size in (24, 96):
        name = f"{size:020d}.checkpoint.parquet"
        lake.clients["eastus"].get_blob_client(lake.container, f"t/_delta_log/{name}").upload_blob(
            bytes(range(256)) * (size * mib // 256), max_concurrency=2)
        job = {"environ": lake.environ, "container": lake.container, "name": name}
        proc = subprocess.run([sys.executable, "-c", _COPY_AND_MEASURE], input=json.dumps(job), text=True,
                              cwd=REPO, capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        report = json.loads(proc.stdout)
        assert report["copied"] == size * mib
        peaks[size] = report["peak_bytes"] / mib
        assert lake.clients["westeu"].get_blob_client(lake.container, f"t/_delta_log/{name}").get_blob_properties().size \
            == size * mib
    # Four times the bytes, the same memory (measured: about 89 MiB each, a few blocks in flight;
    # reading the whole file allocates 96 MiB more for the larger one).
    assert peaks[96] - peaks[24] < 24, peaks
