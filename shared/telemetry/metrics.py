"""OpenTelemetry instruments for replication. No-ops until a MeterProvider is configured
(telemetry.py does that when Application Insights is configured)."""

from __future__ import annotations

from opentelemetry import metrics

_meter = metrics.get_meter("delta_replication")

VERSION_LAG = _meter.create_gauge("replication.version_lag", unit="{version}",
                                  description="Versions the replica is behind its primary")
LAG_SECONDS = _meter.create_gauge("replication.lag_seconds", unit="s",
                                  description="Age of the oldest primary commit the replica lacks")
GROUP_RECOVERY_POINT_AGE = _meter.create_gauge(
    "replication.group_recovery_point_age_seconds", unit="s",
    description="Age of a group's recovery point at a location (every table there holds every commit up to it)")
FILES_COPIED = _meter.create_counter("replication.files_copied", unit="{file}", description="Files copied to replicas")
BYTES_COPIED = _meter.create_counter("replication.bytes_copied", unit="By", description="Bytes copied to replicas")
COPY_DURATION = _meter.create_histogram("replication.copy_duration", unit="s",
                                        description="Time to bring one replica up to an event's version")
FAILURES = _meter.create_counter("replication.failures", unit="{failure}",
                                 description="Replica updates that failed, by error type")


def record_outcome(table: str, outcome) -> None:
    attributes = {"table": table, "replica": outcome.replica}
    if outcome.files:
        FILES_COPIED.add(outcome.files, attributes)
        BYTES_COPIED.add(outcome.bytes, attributes)
    COPY_DURATION.record(outcome.seconds, attributes)
    if outcome.error is not None:
        FAILURES.add(1, {**attributes, "error": type(outcome.error).__name__})


def record_lag(lag) -> None:
    attributes = {"table": lag.table, "replica": lag.replica, "status": lag.status.value}
    VERSION_LAG.set(lag.version_lag, attributes)
    LAG_SECONDS.set(lag.lag_seconds, attributes)


def record_group_point(point) -> None:
    """A group's recovery point age at one location (not recorded while it is unknown)."""
    if point.age_seconds is not None:
        GROUP_RECOVERY_POINT_AGE.set(point.age_seconds, {"group": point.group, "replica": point.replica})
