"""check_replication_lag's job on real Azurite: status rows, healing, alerts once per transition."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from azure.data.tables import TableServiceClient

from shared.config.parse import parse_config
from shared.health.lag import ReplicaHealth
from shared.app.lag_check import check_replication
from shared.health.status import StatusStore
from shared.runtime import ReplicationRuntime
from tests.support.alert_sink import AlertSink
from tests.support.lake import Lake, batch


def status_store(lake: Lake) -> StatusStore:
    return StatusStore(TableServiceClient.from_connection_string(lake.environ["AzureWebJobsStorage"]),
                       table_name=lake.status_table)


def rows_by_replica(store: StatusStore) -> dict:
    return {r.replica: r for r in store.list_rows(table="sales")}


def test_status_rows_for_caught_up_lagging_unreachable_and_diverged(azurite, second_azurite, request):
    lake = Lake(azurite, request.node.name, replica_process=second_azurite)
    try:
        lake.config_doc["tables"][0]["replicas"].append(
            {"name": "westeu2", "connection": "WESTEU_STORAGE", "container": lake.container, "path": "delta/copy2"})
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        lake.write(batch(5, 5), partition_by=["region"])
        lake.deliver_all(lake.events())  # everyone at version 1
        # westeu2 diverges: a foreign version 2.
        lake.clients["westeu"].get_blob_client(lake.container, f"delta/copy2/_delta_log/{2:020d}.json").upload_blob(b'{"commitInfo":{}}\n')
        for i in range(2, 5):
            lake.write(batch(i * 5, 5), partition_by=["region"])  # primary at 4
        lake.deliver(lake.events()[-3])  # westeu/seasia to version 2
        store = status_store(lake)
        check_replication(lake.runtime, store, None, heal=False)
        assert rows_by_replica(store)["seasia"].status == "lagging"
        second_azurite.stop()  # seasia unreachable
        check_replication(lake.runtime, store, None, heal=False)
        rows = rows_by_replica(store)
        assert (rows["westeu"].status, rows["westeu"].version_lag, rows["westeu"].replica_version) == ("lagging", 2, 2)
        assert rows["westeu"].lag_seconds > 0 and rows["westeu"].source_version == 4
        assert rows["seasia"].status == "unreachable" and "seasia" in rows["seasia"].detail
        assert rows["westeu2"].status == "diverged" and "diverged" in rows["westeu2"].detail
        check_replication(lake.runtime, store, None, heal=True)
        rows = rows_by_replica(store)
        assert (rows["westeu"].status, rows["westeu"].version_lag, rows["westeu"].lag_seconds) == ("healthy", 0, 0.0)
        assert rows["seasia"].status == "unreachable"
        assert rows["seasia"].replica_version == 2, "an unreachable replica keeps its last known version"
        assert rows["westeu2"].status == "diverged"
    finally:
        second_azurite.start() if not second_azurite.running else None
        lake.close()


def test_timer_heals_a_replica_whose_events_were_all_lost(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    for i in range(1, 8):
        lake.write(batch(i * 5, 5), partition_by=["region"])
    lake.table().create_checkpoint()
    assert lake.head("westeu") is None
    store = status_store(lake)
    lags = check_replication(lake.runtime, store, None)
    assert {(l.replica, l.status) for l in lags} == {("westeu", ReplicaHealth.HEALTHY), ("seasia", ReplicaHealth.HEALTHY)}
    lake.assert_replicas_equal(every_version=True)
    assert lake.blob_bytes("westeu", "_delta_log/_last_checkpoint") == lake.blob_bytes("eastus", "_delta_log/_last_checkpoint")


def test_alerts_once_per_transition_and_recovered_after_lag_clears(azurite, second_azurite, request):
    lake = Lake(azurite, request.node.name, replica_process=second_azurite,
                table_overrides={"lag_threshold_seconds": 60})
    try:
        with AlertSink() as sink:
            lake.environ.update({"ALERT_TOPIC_ENDPOINT": sink.endpoint, "ALERT_TOPIC_KEY": "test-topic-key"})
            runtime = ReplicationRuntime(parse_config(lake.config_doc), lake.environ)
            store = status_store(lake)
            lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
            check_replication(runtime, store, runtime.alert_publisher())
            assert sink.events == []  # healthy from the start: nothing to say
            second_azurite.stop()
            lake.write(batch(5, 5), partition_by=["region"])
            later = datetime.now(timezone.utc) + timedelta(minutes=5)  # the outage has lasted 5 minutes
            for _ in range(3):
                check_replication(runtime, store, runtime.alert_publisher(), now=later)
            assert sink.types() == ["DeltaReplication.LagThresholdExceeded"]
            event = sink.events[0]
            assert event["subject"] == "tables/sales/replicas/seasia"
            assert event["data"]["status"] == "unreachable" and event["data"]["lagSeconds"] > 60
            assert sink.headers[0].get("aeg-sas-key") == "test-topic-key"
            second_azurite.start()
            for _ in range(2):
                check_replication(runtime, store, runtime.alert_publisher(), now=later)
            assert sink.types() == ["DeltaReplication.LagThresholdExceeded", "DeltaReplication.Recovered"]
            assert lake.head("seasia") == 1
            # A divergence is announced once too.
            lake.clients["westeu"].get_blob_client(lake.container, f"{lake.table_path}/_delta_log/{2:020d}.json").upload_blob(b"{}\n")
            lake.write(batch(10, 5), partition_by=["region"])
            for _ in range(2):
                check_replication(runtime, store, runtime.alert_publisher())
            assert sink.types()[2:] == ["DeltaReplication.Diverged"]
            assert sink.events[2]["subject"] == "tables/sales/replicas/westeu"
            runtime.close()
    finally:
        second_azurite.start() if not second_azurite.running else None
        lake.close()


@pytest.mark.parametrize("primary_head", [9, 10])
def test_a_replica_ahead_of_the_primary_is_diverged_whatever_the_version_numbers(lake, primary_head):
    """Issue 20, case 5: the new primary (westeu) at 9 or 10, seasia at 11 with the same commits up
    to there: seasia holds commits the primary does not, so it is diverged, never healthy."""
    from shared.delta.log import commit_name
    from shared.health.lag import measure_table

    lake.write(batch(0, 5), mode="overwrite")
    for i in range(1, 12):
        lake.write(batch(i * 5, 5))
    (event,) = [e for e in lake.events() if e["subject"].endswith(commit_name(primary_head))]
    lake.deliver(event)  # every replica at primary_head
    # eastus's later commits reach seasia alone (files first, then the commit), as an event would.
    replicator = lake.runtime.replicators["sales"]
    seasia, source = replicator.replicas["seasia"], replicator.source_log()
    for v in range(primary_head + 1, 12):
        for f in source.commit(v).files:
            seasia.copy_file_from(replicator.source_store, f.path, expected_size=f.size)
        assert seasia.create_log_file(commit_name(v), source.commit_bytes(v))
    assert (lake.head("westeu"), lake.head("seasia")) == (primary_head, 11)
    lags = {lag.replica: lag for lag in measure_table(lake.runtime.replicator_from("sales", "westeu"))}
    assert lags["seasia"].status == ReplicaHealth.DIVERGED
    assert lags["seasia"].detail.startswith(f"replica seasia is at version 11, ahead of the primary's {primary_head}")
    assert lags[lake.runtime.config.table("sales").source.name].status == ReplicaHealth.DIVERGED  # also at 11
