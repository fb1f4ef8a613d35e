"""Purges reach every region: the primary's DELETE + VACUUM, delivered as events alone, removes the
purged rows' files from each replica; replicas hold only the table's files."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.maintenance.retention import apply_replica_retention
from shared.maintenance.snapshots import maintain_table_snapshots
from tests.support.lake import Lake, build_rich_table, rows

ZERO = {"delta.deletedFileRetentionDuration": "interval 0 seconds", "delta.logRetentionDuration": "interval 30 days"}


def customers(start: int, count: int, customer: int) -> pa.Table:
    ids = list(range(start, start + count))
    return pa.table({"id": pa.array(ids, pa.int64()), "customer": pa.array([customer] * count, pa.int64()),
                     "amount": pa.array([float(i) for i in ids])})


def deliver_new(lake: Lake, seen: set) -> list:
    results = []
    for event in lake.events():
        if event["subject"] not in seen:
            seen.add(event["subject"])
            results.append(lake.deliver(event))
    return results


def files_holding(lake: Lake, account: str, customer: int) -> set[str]:
    """Data files in an account's copy of the table that contain rows of `customer` (read with pyarrow)."""
    prefix = f"{lake.table_path}/"
    found = set()
    client = lake.clients[account]
    for name in lake.blobs(account):
        if name.startswith(prefix) and name.endswith(".parquet") and "/_delta_log/" not in name:
            data = client.get_blob_client(lake.container, name).download_blob().readall()
            column = pq.read_table(pa.BufferReader(data)).column("customer").to_pylist()
            if customer in column:
                found.add(name[len(prefix):])
    return found


def test_delete_and_vacuum_on_the_primary_purge_every_replica_from_the_events_alone(lake):
    seen: set = set()
    lake.write(customers(0, 5, 42), mode="overwrite", configuration=ZERO)
    deliver_new(lake, seen)
    for i, customer in enumerate((7, 42, 9, 42)):
        lake.write(customers(10 * (i + 1), 5, customer))
        deliver_new(lake, seen)
    lake.table().create_checkpoint()
    lake.write(customers(100, 5, 8))
    deliver_new(lake, seen)
    # A snapshot taken before the purge stays readable (it is a copy with its own files).
    lake.config_doc["tables"][0]["snapshots"] = {"replica": "westeu", "container": lake.container,
                                                 "path": "snapshots", "keep_last": 2}
    lake._runtime = None
    snapshot = maintain_table_snapshots(lake.runtime, lake.runtime.config.tables[0])
    holding = files_holding(lake, "eastus", 42)
    assert len(holding) == 3  # customer 42 is in three files
    for account in ("westeu", "seasia"):
        assert holding <= files_holding(lake, account, 42)

    lake.table().delete("customer = 42")
    deliver_new(lake, seen)
    time.sleep(1.1)  # VACUUM compares deletion timestamps (ms) with now: they must be in the past
    vacuumed = lake.table().vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    assert set(vacuumed) >= holding
    results = deliver_new(lake, seen)  # VACUUM START and VACUUM END: no timer runs in this test
    assert [r.version for r in results] == [lake.head("eastus") - 1, lake.head("eastus")]

    for account in ("westeu", "seasia"):
        assert files_holding(lake, account, 42) == set(), f"{account} still holds customer 42"
        assert set(lake.blobs(account)) - {n for n in lake.blobs(account) if "/snapshots/" in n or
                                           n.startswith("snapshots/")} <= set(lake.blobs("eastus"))
    # Every version the primary can still read reads equal on each replica; nothing they need is gone.
    head = lake.head("eastus")
    readable = []
    for v in range(0, head + 1):
        try:
            expected = rows(lake.table("eastus", v).to_pyarrow_table())
        except Exception:  # noqa: BLE001 - a version whose files the VACUUM removed
            continue
        readable.append(v)
        for account in ("westeu", "seasia"):
            assert rows(lake.table(account, v).to_pyarrow_table()) == expected, f"{account} v{v}"
    assert head in readable and head - 2 in readable  # the DELETE commit and after
    assert 0 not in readable  # the primary's own purged history is unreadable, as on replicas
    from deltalake import DeltaTable

    snap = DeltaTable(f"az://{lake.container}/snapshots/{snapshot.created}", storage_options=lake.options("westeu"))
    assert snap.version() == 0 and len(snap.to_pyarrow_table()) == 30


def test_retain_versions_keeps_what_the_last_five_versions_need(azurite, request):
    lake = Lake(azurite, request.node.name)
    lake.config_doc["tables"][0]["replicas"][0]["retention"] = {"retain_versions": 5}
    try:
        seen: set = set()
        lake.write(customers(0, 5, 0), mode="overwrite", configuration=ZERO)
        deliver_new(lake, seen)
        for i in range(1, 8):  # v1..v7; v6 overwrites, so v0..v5's files become removable
            lake.write(customers(i * 10, 5, i), mode="overwrite" if i == 6 else "append")
            deliver_new(lake, seen)
        time.sleep(1.1)
        vacuumed = lake.table().vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
        assert len(vacuumed) == 6
        deliver_new(lake, seen)  # v8 VACUUM START, v9 VACUUM END: both replicas purge now
        head = lake.head("eastus")
        assert head == 9
        # westeu keeps what versions 5..9 need: v5 reads there, though the primary vacuumed its files.
        assert len(lake.table("westeu", 5).to_pyarrow_table()) == 30
        for v in range(6, head + 1):
            expected = rows(lake.table("eastus", v).to_pyarrow_table())
            assert rows(lake.table("westeu", v).to_pyarrow_table()) == expected
            assert rows(lake.table("seasia", v).to_pyarrow_table()) == expected
        # The primary cannot read v5 any more, and seasia (mirroring the primary) cannot either.
        for account in ("eastus", "seasia"):
            with pytest.raises(OSError):
                lake.table(account, 5).to_pyarrow_table()
        # westeu freed only what no kept version needs: files that only v0..v4 read... none here,
        # since v5 reads every file v0..v4 added; a timer run afterwards frees nothing more.
        result = apply_replica_retention(lake.runtime.replicators["sales"], "westeu")
        assert result.data_files == [] and result.keep_from_version == 0
        assert len(files_of(lake, "westeu")) == len(files_of(lake, "seasia")) + 6
    finally:
        lake.close()


def files_of(lake: Lake, account: str) -> set[str]:
    return {n for n in lake.blobs(account) if n.endswith(".parquet")}


def test_leftover_lease_folder_of_the_previous_version_is_removed_by_the_next_retention_run(lake, caplog):
    lake.write(customers(0, 5, 1), mode="overwrite")
    lake.deliver_all(lake.events())
    legacy = f"{lake.table_path}/_replication/lease"
    lake.clients["westeu"].get_blob_client(lake.container, legacy).upload_blob(b"", overwrite=False)
    caplog.set_level("INFO")
    apply_replica_retention(lake.runtime.replicators["sales"], "westeu")
    assert legacy not in lake.blobs("westeu")
    assert set(lake.blobs("westeu")) == set(lake.blobs("eastus"))
    assert [r.message for r in caplog.records if "legacy_lease_removed" in r.message] == [
        "retention.legacy_lease_removed table=sales replica=westeu paths=_replication/lease"]


def test_replica_accounts_hold_only_the_primary_files_after_a_full_workload(lake):
    build_rich_table(lake)
    events = lake.events()
    # Duplicated and concurrent delivery, in two threads.
    threads = [threading.Thread(target=lake.deliver_all, args=(events + events[::-1],)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lake.assert_replicas_equal(every_version=False)
    primary = set(lake.blobs("eastus"))
    for account in ("westeu", "seasia"):
        assert set(lake.blobs(account)) <= primary
        assert {n for n in lake.blobs(account) if "_delta_log/" in n} == {n for n in primary if "_delta_log/" in n}
