"""Maintenance keeps what only another lineage holds: retention, purges and snapshots act on a
location only while its log is a byte-identical prefix of the primary's (issue 20, case 1)."""

from __future__ import annotations

from datetime import datetime, timezone

from shared.failover.promote import promote
from shared.failover.rejoin import rejoin
from shared.failover.replay import list_quarantine, replay
from shared.maintenance.retention import apply_retention
from shared.maintenance.snapshots import maintain_table_snapshots
from tests.support.failover import deliver_new, failover_lake, write_to
from tests.support.lake import batch


def forget_status_rows(lake) -> None:
    """Rejoin records its quarantine in the shared ReplicationStatus table: leave no row behind
    (other tests list every row of it)."""
    status = lake.runtime.status_store()
    for replica in ("eastus", "westeu", "seasia"):
        try:
            status._table.delete_entity(lake.table_name, replica)
        except Exception:  # noqa: BLE001 - absent
            pass


def data_files(lake, account: str) -> set[str]:
    prefix = f"{lake.table_path}/"
    return {n[len(prefix):] for n in lake.blobs(account)
            if n.startswith(prefix) and not n[len(prefix):].startswith("_delta_log/")}


def test_retention_keeps_a_deposed_primarys_outage_append_until_rejoin_quarantines_it(azurite, request):
    lake = failover_lake(azurite, request.node.name)
    name = lake.table_name
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        lake.write(batch(5, 5), partition_by=["region"])
        deliver_new(lake, "eastus", set())
        # A writer that never heard of the failover commits on eastus: an append (v2), then an overwrite (v3).
        files_before = data_files(lake, "eastus")
        lake.write(batch(9000, 5), partition_by=["region"])
        append_files = data_files(lake, "eastus") - files_before
        lake.write(batch(9100, 5), mode="overwrite", partition_by=["region"])
        assert len(append_files) == 5 and lake.head("eastus") == 3
        promote(lake.runtime, name, "westeu", force=True)  # westeu at v1
        write_to(lake, "westeu", batch(10, 5), partition_by=["region"])
        deliver_new(lake, "westeu", set())
        from shared.health.status import StatusStore

        status = StatusStore(lake.runtime.table_service(), table_name=lake.status_table)  # this test's own
        results = {r.replica: r for r in apply_retention(lake.runtime, status=status)}
        # eastus (diverged from westeu at v2) keeps every file, and says why.
        assert append_files <= data_files(lake, "eastus")
        east = results["eastus"]
        assert east.data_files == [] and east.log_files == []
        assert east.skipped.startswith("its version 2 differs from the primary's") and "rejoin" in east.skipped
        assert status.get_entity(name, "eastus")["Detail"] == f"retention purged nothing: {east.skipped}"
        # seasia is westeu's prefix: retention ran there (nothing skipped).
        assert results["seasia"].skipped is None
        # Rejoin then succeeds, and the append's rows are in the quarantine, replayable.
        result = rejoin(lake.runtime, name, "eastus")
        assert result.versions[:2] == [2, 3] and result.head_after == 2
        appended = [c for c in list_quarantine(lake.runtime, name) if c.version == 2]
        assert [(c.operation, c.rows_added, c.blind_append) for c in appended] == [("WRITE", 5, True)]
        assert replay(lake.runtime, name, 1).applied == [2]
        ids = sorted(lake.table("westeu").to_pyarrow_table().column("id").to_pylist())
        assert [i for i in ids if i >= 9000] == list(range(9000, 9005))
    finally:
        forget_status_rows(lake)
        lake.close()


def test_a_diverged_replica_is_neither_snapshotted_nor_its_snapshots_rotated(azurite, request):
    lake = failover_lake(azurite, request.node.name)
    lake.config_doc["tables"][0]["snapshots"] = {"replica": "westeu", "container": lake.container,
                                                 "path": "snapshots/sales", "keep_last": 1}
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        deliver_new(lake, "eastus", set())
        table = lake.runtime.config.table(lake.table_name)
        first = maintain_table_snapshots(lake.runtime, table, now=datetime(2026, 1, 1, tzinfo=timezone.utc))
        assert first.created == "20260101T000000Z"
        write_to(lake, "westeu", batch(500, 5), partition_by=["region"])  # someone writes to the replica
        later = maintain_table_snapshots(lake.runtime, table, now=datetime(2026, 1, 2, tzinfo=timezone.utc))
        assert (later.created, later.deleted) == (None, [])
        assert later.skipped.startswith("its log is ahead of the primary's (version 1, the primary at 0)")
        assert {n.split("/")[2] for n in lake.blobs("westeu") if n.startswith("snapshots/sales/")} == \
            {"20260101T000000Z"}
    finally:
        lake.close()
