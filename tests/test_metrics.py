"""Metrics reach an OpenTelemetry reader; without Application Insights nothing is exported."""

from __future__ import annotations

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from shared.health.telemetry import configure_telemetry
from tests.support.lake import batch

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


def test_replication_records_files_bytes_and_duration(lake):
    lake.write(batch(0, 10), mode="overwrite", partition_by=["region"])
    lake.deliver_all(lake.events())
    found = points()
    files = {a["replica"]: p.value for a, p in found["replication.files_copied"] if a["table"] == "sales"}
    assert files["westeu"] >= 5 and files["seasia"] >= 5
    assert any(p.value > 0 for a, p in found["replication.bytes_copied"])
    assert any(p.count >= 1 for a, p in found["replication.copy_duration"])


def test_no_exporter_without_application_insights():
    assert configure_telemetry({}) is False
