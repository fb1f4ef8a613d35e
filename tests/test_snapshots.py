"""maintain_snapshots on Azurite: snapshots read equal to the source, keep_last holds, interrupted ones go."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from deltalake import DeltaTable

from shared import failpoints
from shared.maintenance.snapshots import maintain_table_snapshots
from tests.support.lake import Lake, batch, build_rich_table, rows


@pytest.fixture
def snap_lake(azurite, request):
    lake = Lake(azurite, request.node.name, table_overrides={
        "snapshots": {"replica": "westeu", "container": None, "path": "snapshots/sales", "keep_last": 2}})
    lake.config_doc["tables"][0]["snapshots"]["container"] = lake.container
    yield lake
    failpoints.disarm_all()
    lake.close()


def snapshot_table(lake: Lake, stamp: str) -> DeltaTable:
    return DeltaTable(f"az://{lake.container}/snapshots/sales/{stamp}", storage_options=lake.options("westeu"))


def take(lake: Lake, minutes: int):
    table = lake.runtime.config.table("sales")
    return maintain_table_snapshots(lake.runtime, table, now=datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=minutes))


def test_snapshot_reads_equal_to_the_source_at_its_version_and_is_self_contained(snap_lake):
    lake = snap_lake
    build_rich_table(lake, appends=6)
    lake.deliver_all(lake.events())
    head = lake.head("westeu")
    result = take(lake, 0)
    assert (result.created, result.version) == ("20260101T000000Z", head)
    snap = snapshot_table(lake, result.created)
    assert snap.version() == 0
    assert rows(snap.to_pyarrow_table()) == rows(lake.table("eastus", head).to_pyarrow_table())
    assert snap.metadata().partition_columns == ["region"]
    assert snap.metadata().id != lake.table("eastus").metadata().id
    # Self-contained: every file it reads lives under the snapshot folder.
    assert all(f"/snapshots/sales/{result.created}/" in uri for uri in snap.file_uris())
    # Later commits to the table do not change the snapshot.
    lake.write(batch(7000, 5), partition_by=["region"])
    lake.deliver_all(lake.events()[-1:])
    assert rows(snapshot_table(lake, result.created).to_pyarrow_table()) == rows(lake.table("eastus", head).to_pyarrow_table())


def test_retention_keeps_exactly_keep_last_newest_snapshots(snap_lake):
    lake = snap_lake
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    versions = []
    for minute in range(4):
        lake.write(batch(100 + minute * 5, 5), partition_by=["region"])
        lake.deliver_all(lake.events()[-1:])
        result = take(lake, minute)
        versions.append(result.version)
    assert result.kept == ["20260101T000200Z", "20260101T000300Z"]
    folders = {n.split("/")[2] for n in lake.blobs("westeu") if n.startswith("snapshots/sales/")}
    assert folders == set(result.kept)
    for stamp, version in zip(result.kept, versions[2:]):
        assert rows(snapshot_table(lake, stamp).to_pyarrow_table()) == rows(lake.table("eastus", version).to_pyarrow_table())


def test_interrupted_snapshot_is_not_counted_and_is_removed_next_run(snap_lake):
    lake = snap_lake
    lake.write(batch(0, 20), mode="overwrite", partition_by=["region"])
    lake.deliver_all(lake.events())
    take(lake, 0)

    class Interrupted(Exception):
        pass

    def interrupt():
        raise Interrupted()

    failpoints.arm(failpoints.SNAPSHOT_FILE, after=2, action=interrupt)
    with pytest.raises(Interrupted):
        take(lake, 1)
    failpoints.disarm_all()
    partial = [n for n in lake.blobs("westeu") if n.startswith("snapshots/sales/20260101T000100Z/")]
    assert partial and not any("_delta_log" in n for n in partial)
    result = take(lake, 2)
    assert result.removed_incomplete == ["20260101T000100Z"]
    assert result.kept == ["20260101T000000Z", "20260101T000200Z"]
    assert not [n for n in lake.blobs("westeu") if n.startswith("snapshots/sales/20260101T000100Z/")]
