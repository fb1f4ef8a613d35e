"""A lease holder that cannot renew stops before its next write (issue 20, case 9).

The renewal fails for real: a second holder breaks the lease and takes it (what happens when
the first holder's renewals stop reaching storage for longer than the lease lasts), and the
renewal is made at a chosen instant (`renew_held_leases_now`) instead of waiting for the keeper.
"""

from __future__ import annotations

import pytest
from azure.storage.blob import BlobLeaseClient, BlobServiceClient

from shared import failpoints
from shared.errors import LeaseLost
from shared.failover.promote import promote
from shared.failover.rejoin import REJOIN_COPIED, quarantine_store, read_manifest, rejoin
from shared.maintenance.retention import RETENTION_DELETING, apply_replica_retention
from shared.storage.lease import LOCKS_CONTAINER, location_lease_name, renew_held_leases_now
from tests.support.failover import deliver_new, failover_lake, write_to
from tests.support.lake import batch
from tests.test_maintenance_lineage import forget_status_rows


class Thief:
    """A second holder: breaks a lease held by this process and takes it, then renews it
    for this process now, which fails as it would on the keeper's next round."""

    def __init__(self, lake, name: str) -> None:
        self.service = BlobServiceClient.from_connection_string(lake.environ["AzureWebJobsStorage"])
        self.blob = self.service.get_container_client(LOCKS_CONTAINER).get_blob_client(name)
        self.lease: BlobLeaseClient | None = None

    def __call__(self) -> None:
        BlobLeaseClient(self.blob).break_lease(lease_break_period=0)
        self.lease = BlobLeaseClient(self.blob)
        self.lease.acquire(lease_duration=-1)
        renew_held_leases_now()

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
        self.service.close()


@pytest.fixture
def diverged(azurite, request):
    """eastus promoted away from (forced) with two outage commits; westeu moved on."""
    lake = failover_lake(azurite, request.node.name)
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    deliver_new(lake, "eastus", set())
    for k in range(2):
        lake.write(batch(9000 + k * 5, 5), partition_by=["region"])
    promote(lake.runtime, lake.table_name, "westeu", force=True)
    write_to(lake, "westeu", batch(5, 5), partition_by=["region"])
    deliver_new(lake, "westeu", set())
    yield lake
    failpoints.disarm_all()
    forget_status_rows(lake)
    lake.close()


def test_a_rejoin_that_cannot_renew_its_lease_stops_before_removing_anything(diverged):
    lake = diverged
    table = lake.runtime.config.table(lake.table_name)
    eastus = lake.runtime.replicator(lake.table_name).replicas["eastus"]
    thief = Thief(lake, location_lease_name(*eastus.location_key))
    log_before = lake.log_names("eastus")
    failpoints.arm(REJOIN_COPIED, after=1, action=thief)
    try:
        with pytest.raises(LeaseLost, match=r"could not be renewed .*stopped before its next write"):
            rejoin(lake.runtime, lake.table_name, "eastus")
        # Copied and verified into the quarantine, but not one log file removed from eastus.
        assert lake.log_names("eastus") == log_before and lake.head("eastus") == 3
        assert read_manifest(quarantine_store(lake.runtime, table.location("eastus"), 1))["versions"] == [1, 2, 3]
    finally:
        thief.release()
    result = rejoin(lake.runtime, lake.table_name, "eastus")  # the lease is free again: the rerun completes
    assert (result.versions, result.head_after) == ([1, 2, 3], 1)


def test_retention_that_cannot_renew_its_lease_deletes_nothing(lake):
    prefix = f"{lake.table_path}/"

    def data_files(account):
        return {n for n in lake.blobs(account) if n.startswith(prefix) and "/_delta_log/" not in n}

    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.deliver_all(lake.events())
    first = data_files("eastus")
    lake.write(batch(5, 5), mode="overwrite", partition_by=["region"])  # v1 no longer reads v0's files
    lake.deliver_all(lake.events()[-1:])
    # The primary's VACUUM, without the clock: v0's files go from the primary.
    lake.clients["eastus"].get_container_client(lake.container).delete_blobs(*sorted(first))
    replicator = lake.runtime.replicators["sales"]
    thief = Thief(lake, location_lease_name(*replicator.replicas["westeu"].location_key))
    before = lake.blobs("westeu")
    failpoints.arm(RETENTION_DELETING, after=1, action=thief, where={"replica": "westeu"})
    try:
        with pytest.raises(LeaseLost, match="could not be renewed"):
            apply_replica_retention(replicator, "westeu")
        assert lake.blobs("westeu") == before
    finally:
        failpoints.disarm_all()
        thief.release()
    # With the lease its own again, the same run deletes exactly v0's files.
    result = apply_replica_retention(replicator, "westeu")
    assert {prefix + p for p in result.data_files} == first
    assert data_files("westeu") == data_files("eastus")


def test_a_catch_up_that_cannot_renew_its_lease_stops_before_its_next_commit(lake):
    """A catch-up of three versions loses its lease after writing the first: the second and
    third commits are not written (the holder that took the lease owns the location now)."""
    from shared.replication.outcome import ReplicaState

    for k in range(4):
        lake.write(batch(k * 5, 5), mode="overwrite" if k == 0 else "append", partition_by=["region"])
    lake.deliver(lake.events()[0])  # every replica at v0
    replicator = lake.runtime.replicators["sales"]
    thief = Thief(lake, location_lease_name(*replicator.replicas["westeu"].location_key))
    failpoints.arm(failpoints.COMMIT_AFTER, after=1, action=thief, where={"replica": "westeu"})
    try:
        outcomes = {o.replica: o for o in replicator.replicate(3)}
        assert outcomes["westeu"].state == ReplicaState.ERROR
        assert isinstance(outcomes["westeu"].error, LeaseLost)
        assert lake.head("westeu") == 1, "the catch-up wrote a commit after its lease was lost"
        assert lake.head("seasia") == 3
    finally:
        failpoints.disarm_all()
        thief.release()
    assert {o.replica: o.head_after for o in replicator.replicate(3)}["westeu"] == 3
