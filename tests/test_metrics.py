"""Metrics reach an OpenTelemetry reader; without Application Insights nothing is exported."""

from __future__ import annotations

import uuid

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from shared.telemetry.setup import configure_telemetry
from tests.support.lake import Lake, batch

_READER = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))


def points() -> dict:
    found = {}
    data = _READER.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    found.setdefault(metric.name, []).append((dict(point.attributes), point))
    return found


def test_replication_records_files_bytes_and_duration(azurite, request):
    # The reader is process-wide and counters accumulate: a table name no other test uses
    # makes these points this test's alone, so exact values can be asserted.
    table = "metrics" + uuid.uuid4().hex[:8]
    lake = Lake(azurite, request.node.name, table_overrides={"name": table})
    try:
        lake.write(batch(0, 10), mode="overwrite", partition_by=["region"])
        (result,) = lake.deliver_all(lake.events())
        copied = {o.replica: (o.files, o.bytes) for o in result.outcomes}
        assert copied["westeu"][0] == 5 and copied["seasia"][0] == 5
        found = points()
        files = {a["replica"]: p.value for a, p in found["replication.files_copied"] if a["table"] == table}
        nbytes = {a["replica"]: p.value for a, p in found["replication.bytes_copied"] if a["table"] == table}
        durations = {a["replica"]: p.count for a, p in found["replication.copy_duration"] if a["table"] == table}
        assert files == {"westeu": 5, "seasia": 5}
        assert nbytes == {r: copied[r][1] for r in ("westeu", "seasia")}
        assert durations == {"westeu": 1, "seasia": 1}
    finally:
        lake.close()


def test_no_exporter_without_application_insights():
    assert configure_telemetry({}) is False


def test_the_lag_check_records_each_group_recovery_point_age(azurite, request):
    from datetime import timedelta

    from shared.app.lag_check import check_replication
    from shared.health.status import StatusStore
    from tests.test_groups import GroupLake, commit_time
    from tests.test_groups import batch as group_batch

    lake = GroupLake(azurite, request.node.name)
    try:
        lake.write("sales/orders", group_batch(0, 4))
        status = StatusStore(lake.runtime.table_service(), table_name="S" + uuid.uuid4().hex[:12])
        check_replication(lake.runtime, status, None)
        lake.write("sales/orders", group_batch(4, 4))
        later = commit_time(lake, "sales/orders", 1) + timedelta(seconds=90)
        check_replication(lake.runtime, status, None, heal=False, now=later)
        ages = {a["replica"]: p.value for a, p in points()["replication.group_recovery_point_age_seconds"]
                if a["group"] == lake.group}
        assert ages == {"westeu": 90.001, "seasia": 90.001}
    finally:
        lake.close()
