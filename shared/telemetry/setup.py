"""Export metrics to Azure Monitor when APPLICATIONINSIGHTS_CONNECTION_STRING is set; otherwise nothing."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from shared.config.settings import resolve_telemetry

log = logging.getLogger(__name__)
_configured = False


def configure_telemetry(environ: Mapping[str, str] | None = None) -> bool:
    """Install an Azure Monitor metric exporter once per host; False when not configured."""
    global _configured
    connection_string = resolve_telemetry(environ)
    if connection_string is None or _configured:
        return _configured
    from azure.monitor.opentelemetry.exporter import AzureMonitorMetricExporter
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    reader = PeriodicExportingMetricReader(AzureMonitorMetricExporter(connection_string=connection_string),
                                           export_interval_millis=60_000)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    _configured = True
    log.info("telemetry.configured exporter=azure_monitor")
    return True
