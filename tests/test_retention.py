"""VACUUM and log-cleanup propagation: the replica frees what the primary freed, and nothing a kept version needs."""

from __future__ import annotations

import time

from shared.maintenance.retention import apply_replica_retention
from tests.support.lake import Lake, batch, rows

ZERO_RETENTION = {"delta.logRetentionDuration": "interval 0 days",
                  "delta.deletedFileRetentionDuration": "interval 0 days"}


def data_files(lake: Lake, account: str) -> set[str]:
    prefix = f"{lake.table_path}/"
    return {n[len(prefix):] for n in lake.blobs(account)
            if n.startswith(prefix) and not n[len(prefix):].startswith("_delta_log/")}


def history(lake: Lake) -> None:
    """Replicated live, commit by commit, so the replicas hold history the primary later drops."""
    seen: set = set()

    def replicate() -> None:
        for event in lake.events():
            if event["subject"] not in seen:
                seen.add(event["subject"])
                lake.deliver(event)

    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"], configuration=ZERO_RETENTION)
    replicate()
    for i in range(1, 5):
        lake.write(batch(i * 5, 5), partition_by=["region"])
        replicate()
    lake.write(batch(100, 5), mode="overwrite", partition_by=["region"])  # removes every earlier file
    replicate()
    lake.table().delete("id = 101")
    replicate()
    lake.table().create_checkpoint()  # delta-rs also cleans up the expired log here
    lake.write(batch(200, 5), partition_by=["region"])
    replicate()


def vacuum_primary(lake: Lake) -> list[str]:
    time.sleep(1.2)  # deletion timestamps must be older than the (zero) retention
    deleted = lake.table().vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False, full=True)
    lake.table().cleanup_metadata()
    lake.deliver_all(lake.events()[-2:])  # the VACUUM START/END commits
    return deleted


def test_replica_frees_what_the_primary_vacuumed_and_keeps_every_retained_version_readable(lake):
    history(lake)
    before = data_files(lake, "westeu")
    deleted = vacuum_primary(lake)
    assert deleted
    result = apply_replica_retention(lake.runtime.replicators["sales"], "westeu")
    assert not result.dry_run
    assert data_files(lake, "westeu") == data_files(lake, "eastus")
    assert before - data_files(lake, "westeu") == set(deleted) | (before - data_files(lake, "eastus"))
    primary_log = [n for n in lake.log_names("eastus") if n[:20].isdigit()]
    first = min(int(n[:20]) for n in primary_log)
    assert result.keep_from_version == first
    assert min(int(n[:20]) for n in lake.log_names("westeu") if n[:20].isdigit()) == first
    for v in range(first, lake.head("eastus") + 1):
        assert rows(lake.table("westeu", v).to_pyarrow_table()) == rows(lake.table("eastus", v).to_pyarrow_table())
    # seasia had no timer run: the VACUUM END event alone purged it.
    assert data_files(lake, "seasia") == data_files(lake, "eastus")


def test_dry_run_lists_without_deleting(azurite, request):
    lake = Lake(azurite, request.node.name)
    lake.config_doc["tables"][0]["replicas"][0]["retention"] = {"dry_run": True}
    try:
        history(lake)
        before = lake.blobs("westeu")
        deleted = vacuum_primary(lake)
        before = lake.blobs("westeu")
        result = apply_replica_retention(lake.runtime.replicators["sales"], "westeu")
        assert result.dry_run and set(deleted) <= set(result.data_files) and result.log_files
        assert lake.blobs("westeu") == before
    finally:
        lake.close()


def test_retain_versions_keeps_more_history_than_the_primary_and_never_deletes_files_it_needs(azurite, request):
    lake = Lake(azurite, request.node.name)
    lake.config_doc["tables"][0]["replicas"][0]["retention"] = {"retain_versions": 100}
    try:
        history(lake)
        vacuum_primary(lake)
        result = apply_replica_retention(lake.runtime.replicators["sales"], "westeu")
        assert result.log_files == [] and result.keep_from_version == 0
        # Every version the replica kept still reads, though the primary vacuumed their files.
        for v in range(0, 5):
            assert len(lake.table("westeu", v).to_pyarrow_table()) == 5 * (v + 1)
        assert result.data_files == []
    finally:
        lake.close()
