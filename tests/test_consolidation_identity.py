"""Consolidation follows a source's identity (metaData.id), reads a snapshot with deletion vectors when
history is gone, and one source's failure never blocks the others."""

from __future__ import annotations

import io
import json
import logging

import pyarrow.parquet as pq
import pytest

from tests.support.alert_sink import AlertSink
from tests.support.regions import Regions, orders
from tests.test_consolidation import bitmap_array, z85_encode


@pytest.fixture
def one(azurite, request):
    regions = Regions(azurite, request.node.name, sources=[
        {"connection": "EASTUS_STORAGE", "container": "c", "path": "orders", "region": "eastus"}])
    regions.config_doc["consolidations"][0]["sources"][0]["container"] = regions.container
    yield regions
    regions.close()


def test_a_recreated_source_is_reported_once_and_consolidated_from_its_version_0(one, caplog):
    for start in range(0, 12, 3):
        one.write("eastus", orders("eastus", range(start, start + 3)))  # versions 0..3
    one.run()
    container = one.clients["eastus"].get_container_client(one.container)
    for blob in list(container.list_blobs(name_starts_with="orders/")):
        container.delete_blob(blob.name)
    one.write("eastus", orders("eastus", range(100, 103)))  # a new table: versions 0, 1
    one.write("eastus", orders("eastus", range(103, 105)))
    caplog.set_level(logging.WARNING)
    with AlertSink() as sink:
        one.environ.update({"ALERT_TOPIC_ENDPOINT": sink.endpoint, "ALERT_TOPIC_KEY": "k"})
        first = one.run(alerts=one.runtime.alert_publisher())["eastus"]
        second = one.run(alerts=one.runtime.alert_publisher())["eastus"]
        assert [e["eventType"] for e in sink.events] == ["DeltaReplication.ConsolidationSourceRecreated"]
    assert first.status == "up_to_date" and first.rows_inserted == 5 and first.merged_version == 1
    assert second.rows_inserted == 0 and second.commits_read == 0
    assert sorted(r["transaction_id"] for r in one.global_rows()) == list(range(12)) + list(range(100, 105))
    reports = [r.getMessage() for r in caplog.records if "consolidation.source_recreated" in r.getMessage()]
    assert len(reports) == 1 and "source=eastus" in reports[0]


def test_the_snapshot_fallback_honours_deletion_vectors(one, caplog):
    one.write("eastus", orders("eastus", range(0, 3)))
    one.run()
    container = one.clients["eastus"].get_container_client(one.container)
    buf = io.BytesIO()
    pq.write_table(orders("eastus", range(100, 105)), buf)
    container.upload_blob("orders/part-dv.parquet", buf.getvalue())
    dv = {"storageType": "i", "pathOrInlineDv": z85_encode(bitmap_array([1, 3])), "sizeInBytes": 36, "cardinality": 2}
    add = {"path": "part-dv.parquet", "partitionValues": {}, "size": len(buf.getvalue()), "modificationTime": 0,
           "dataChange": True, "deletionVector": dv}
    container.upload_blob("orders/_delta_log/00000000000000000001.json",
                          (json.dumps({"commitInfo": {"operation": "WRITE"}}) + "\n" + json.dumps({"add": add})).encode())
    one.write("eastus", orders("eastus", range(200, 202)))  # version 2
    v2 = [json.loads(line) for line in container.download_blob("orders/_delta_log/00000000000000000002.json")
          .readall().splitlines()]
    gone = next(a["add"]["path"] for a in v2 if "add" in a)
    container.delete_blob(f"orders/{gone}")  # vacuumed: the incremental read cannot have it
    container.upload_blob("orders/_delta_log/00000000000000000003.json",
                          json.dumps({"remove": {"path": gone, "dataChange": True, "deletionTimestamp": 1}}).encode())
    caplog.set_level(logging.WARNING)
    outcome = one.run()["eastus"]
    assert outcome.status == "up_to_date" and outcome.fallback and outcome.merged_version == 3
    assert sorted(r["transaction_id"] for r in one.global_rows()) == [0, 1, 2, 100, 102, 104]


def test_one_failing_source_never_blocks_the_others_and_shows_in_status(azurite, request):
    regions = Regions(azurite, request.node.name)
    try:
        for region in ("eastus", "westeu", "seasia"):
            regions.write(region, orders(region, range(0, 3)))
        # westeu's next commit is not valid Delta: the add has no usable size or path type.
        container = regions.clients["westeu"].get_container_client(regions.container)
        container.upload_blob("orders/_delta_log/00000000000000000001.json",
                              json.dumps({"add": {"path": 42}}).encode())
        regions.write("seasia", orders("seasia", range(3, 5)))
        outcomes = regions.run()
        assert {s: o.status for s, o in outcomes.items()} == {"eastus": "up_to_date", "westeu": "error",
                                                              "seasia": "up_to_date"}
        rows = {row.source: row for row in regions.status.list_rows(consolidation=regions.name)}
        assert rows["westeu"].status == "error" and rows["westeu"].last_error
        assert sorted(k for k in regions.global_keys() if k[0] == "seasia") == [("seasia", i) for i in range(5)]
    finally:
        regions.close()
