"""Every rejected input writes nothing to any replica (lease included: leases live in the function
app's storage) and is reported exactly: its disposition, each replica's state and error type, and
one WARNING line."""

from __future__ import annotations

import json
import logging

import pytest

from devtools.events import blob_created_event
from shared.errors import (
    CommitIncomplete,
    CommitNotFound,
    DataFileMissing,
    InvalidCommit,
)
from shared.app.commit_event import EventDisposition
from shared.replication.outcome import ReplicaState
from tests.support.lake import Lake, batch

REPLICAS = ("westeu", "seasia")


@pytest.fixture
def caught_up(lake: Lake) -> Lake:
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.write(batch(5, 5), partition_by=["region"])
    lake.deliver_all(lake.events())
    assert lake.head("westeu") == 1
    return lake


def snapshot(lake: Lake) -> dict:
    return {a: lake.blobs(a) for a in REPLICAS}


def put_commit(lake: Lake, version: int, actions: list[dict] | bytes) -> dict:
    data = actions if isinstance(actions, bytes) else "".join(json.dumps(a) + "\n" for a in actions).encode()
    blob = f"{lake.table_path}/_delta_log/{version:020d}.json"
    lake.clients["eastus"].get_blob_client(lake.container, blob).upload_blob(data, overwrite=True)
    return blob_created_event("eastus", lake.container, blob, size=len(data), azurite_port=lake.azurite.port)


def add(path: str) -> dict:
    return {"add": {"path": path, "size": 4, "partitionValues": {}, "modificationTime": 1, "dataChange": True}}


def assert_nothing_written(lake: Lake, before: dict) -> None:
    assert snapshot(lake) == before


def outcome_summary(result) -> list[tuple]:
    return [(o.replica, o.state, type(o.error), o.retryable) for o in result.outcomes]


def warnings_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("actions, error", [
    ([add("abfss://lake@otheraccount.dfs.core.windows.net/delta/sales/x.parquet")], InvalidCommit),
    ([add("https://otheraccount.blob.core.windows.net/lake/x.parquet")], InvalidCommit),
    ([add("../../escape/x.parquet")], InvalidCommit),
    ([add("region%3Da/%2E%2E/%2E%2E/%2E%2E/x.parquet")], InvalidCommit),
    ([add("_delta_log/00000000000000000009.json")], InvalidCommit),
    (b"", CommitIncomplete),
    (b'{"commitInfo": {"timestamp": 1', CommitIncomplete),
])
def test_unsafe_or_incomplete_commit_writes_nothing(caught_up, actions, error, caplog):
    before = snapshot(caught_up)
    event = put_commit(caught_up, 2, actions)
    caplog.clear()
    caplog.set_level(logging.INFO)
    result = caught_up.deliver(event)
    assert result.disposition == EventDisposition.HANDLED and result.version == 2
    assert outcome_summary(result) == [(r, ReplicaState.ERROR, error, error.retryable) for r in REPLICAS]
    warnings = warnings_logged(caplog)
    assert len(warnings) == 1 and warnings[0].startswith("commit.rejected table=sales version=2 ")
    assert_nothing_written(caught_up, before)


def test_commit_above_the_size_limit_writes_nothing(azurite, request):
    lake = Lake(azurite, request.node.name, table_overrides={"max_commit_bytes": 2000})
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        lake.deliver_all(lake.events())
        before = snapshot(lake)
        padding = {"commitInfo": {"timestamp": 1, "operation": "WRITE", "note": "x" * 5000}}
        result = lake.deliver(put_commit(lake, 1, [padding]))
        assert outcome_summary(result) == [(r, ReplicaState.ERROR, InvalidCommit, False) for r in REPLICAS]
        assert "max_commit_bytes=2000" in str(result.outcomes[0].error)
        assert_nothing_written(lake, before)
    finally:
        lake.close()


def test_event_for_a_version_with_no_blob_writes_nothing(caught_up):
    before = snapshot(caught_up)
    blob = f"{caught_up.table_path}/_delta_log/{7:020d}.json"
    result = caught_up.deliver(blob_created_event("eastus", caught_up.container, blob, azurite_port=caught_up.azurite.port))
    assert result.disposition == EventDisposition.HANDLED and result.version == 7
    assert outcome_summary(result) == [(r, ReplicaState.ERROR, CommitNotFound, False) for r in REPLICAS]
    assert_nothing_written(caught_up, before)


def test_missing_data_file_on_primary_writes_no_commit(caught_up):
    before = snapshot(caught_up)
    result = caught_up.deliver(put_commit(caught_up, 2, [add("region=a/never-written.parquet")]))
    assert outcome_summary(result) == [(r, ReplicaState.ERROR, DataFileMissing, True) for r in REPLICAS]
    assert all("never-written.parquet" in str(o.error) for o in result.outcomes)
    assert_nothing_written(caught_up, before)


def _event(lake, **changes):
    blob = f"{lake.table_path}/_delta_log/{2:020d}.json"
    event = blob_created_event("eastus", lake.container, blob, azurite_port=lake.azurite.port)
    for key, value in changes.items():
        if key == "url":
            event["data"]["url"] = value
        else:
            event[key] = value
    return event


@pytest.mark.parametrize("make", [
    lambda l: blob_created_event("nobody", l.container, f"{l.table_path}/_delta_log/{2:020d}.json", azurite_port=l.azurite.port),
    lambda l: blob_created_event("eastus", "not-configured", f"{l.table_path}/_delta_log/{2:020d}.json", azurite_port=l.azurite.port),
    lambda l: blob_created_event("eastus", l.container, f"delta/orders/_delta_log/{2:020d}.json", azurite_port=l.azurite.port),
    lambda l: _event(l, url=f"http://127.0.0.1:{l.azurite.port}/eastus/{l.container}/{l.table_path}/../orders/_delta_log/{2:020d}.json"),
    lambda l: _event(l, url=f"http://127.0.0.1:{l.azurite.port}/eastus/{l.container}/{l.table_path}/%2e%2e/sales/_delta_log/{2:020d}.json"),
    lambda l: _event(l, url=f"http://127.0.0.1:{l.azurite.port}/eastus/{l.container}/{l.table_path}/%252e%252e/sales/_delta_log/{2:020d}.json"),
    lambda l: _event(l, url="not a url"),
    lambda l: _event(l, url=None),
    lambda l: _event(l, eventType="Microsoft.Storage.BlobDeleted"),
    lambda l: _event(l, eventType="Microsoft.Storage.BlobTierChanged"),
    lambda l: {"specversion": "1.0", "type": "Microsoft.Storage.BlobDeleted", "source": "x", "data": {}},
    lambda l: {"data": {"url": "x"}},
])
def test_rejected_events_write_nothing_and_log_one_warning(caught_up, make, caplog):
    # The primary has version 2, so a wrongly accepted event would replicate it.
    caught_up.write(batch(10, 5), partition_by=["region"])
    before = snapshot(caught_up)
    event = make(caught_up)
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    result = caught_up.deliver(event)
    assert result.disposition == EventDisposition.REJECTED
    assert result.outcomes == [] and result.table is None
    assert result.reason
    assert warnings_logged(caplog) == [f"event.rejected reason={result.reason}"]
    assert_nothing_written(caught_up, before)


def test_non_log_blob_events_are_ignored_at_debug_and_write_nothing(caught_up, caplog):
    caught_up.write(batch(10, 5), partition_by=["region"])
    before = snapshot(caught_up)
    data_file = next(n for n in caught_up.blobs("eastus") if n.endswith(".parquet"))
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    blobs = (data_file, f"{caught_up.table_path}/_delta_log/.{2:020d}.json.123.tmp")
    results = [caught_up.deliver(blob_created_event("eastus", caught_up.container, blob,
                                                    azurite_port=caught_up.azurite.port)) for blob in blobs]
    assert [(r.disposition, r.outcomes) for r in results] == [(EventDisposition.IGNORED, [])] * 2
    assert warnings_logged(caplog) == []
    assert len([r for r in caplog.records if r.getMessage().startswith("event.ignored ")]) == 2
    assert_nothing_written(caught_up, before)
