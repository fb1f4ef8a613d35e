"""Retention by age (`retention_hours`) and the timer's entry point over every replica, with the
purge recorded on each replica's status row (mutation testing found both unexercised)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from azure.data.tables import TableServiceClient

from shared.health.status import StatusStore
from shared.maintenance.retention import apply_replica_retention, apply_retention
from tests.support.lake import Lake, rows
from tests.test_retention import data_files, history, vacuum_primary


def test_retention_hours_keeps_the_versions_written_within_the_window_and_frees_the_older(azurite, request):
    lake = Lake(azurite, request.node.name)
    lake.config_doc["tables"][0]["replicas"][0]["retention"] = {"retention_hours": 1}
    try:
        history(lake)  # versions 0..7, a checkpoint at 6
        deleted = vacuum_primary(lake)  # versions 8 and 9; the primary frees the files of 0..4
        assert deleted
        replicator = lake.runtime.replicators["sales"]
        first = min(int(n[:20]) for n in lake.log_names("westeu") if n.endswith(".json"))
        # Every commit is minutes old: all are within the hour and every one still reads.
        kept = apply_replica_retention(replicator, "westeu")
        assert (kept.keep_from_version, kept.log_files, kept.data_files) == (first, [], [])
        for v in range(first, 5):
            assert len(lake.table("westeu", v).to_pyarrow_table()) == 5 * (v + 1)
        # Two hours on, none is: back to the newest checkpoint at or before the head (6).
        later = apply_replica_retention(replicator, "westeu", now=datetime.now(timezone.utc) + timedelta(hours=2))
        assert later.keep_from_version == 6
        assert later.log_files == sorted(f"_delta_log/{v:020d}.json" for v in range(first, 6))
        assert set(deleted) <= set(later.data_files)
        assert min(int(n[:20]) for n in lake.log_names("westeu") if n.endswith(".json")) == 6
        for v in range(6, lake.head("eastus") + 1):
            assert rows(lake.table("westeu", v).to_pyarrow_table()) == rows(lake.table("eastus", v).to_pyarrow_table())
    finally:
        lake.close()


def test_the_timer_applies_retention_to_every_replica_and_records_each_purge(lake):
    history(lake)
    vacuum_primary(lake)  # its VACUUM END event purged both replicas already: make them hold more
    status = StatusStore(TableServiceClient.from_connection_string(lake.environ["AzureWebJobsStorage"]),
                         table_name=lake.status_table)
    leftover = f"{lake.table_path}/region=gone/part-leftover.parquet"
    for account in ("westeu", "seasia"):  # a file the primary no longer has, that no version reads
        lake.clients[account].get_blob_client(lake.container, leftover).upload_blob(b"x" * 7)
    results = apply_retention(lake.runtime, status=status)
    assert [(r.table, r.replica, r.data_files, r.bytes_freed, r.files_freed) for r in results] == [
        ("sales", "westeu", ["region=gone/part-leftover.parquet"], 7, 1),
        ("sales", "seasia", ["region=gone/part-leftover.parquet"], 7, 1)]
    for account in ("westeu", "seasia"):
        assert data_files(lake, account) == data_files(lake, "eastus")
    table = TableServiceClient.from_connection_string(lake.environ["AzureWebJobsStorage"]).get_table_client(
        lake.status_table)
    recorded = {r: table.get_entity("sales", r) for r in ("westeu", "seasia")}
    assert {r: (e["LastPurgeFiles"], e["LastPurgeBytes"]) for r, e in recorded.items()} == {
        "westeu": (1, 7), "seasia": (1, 7)}
