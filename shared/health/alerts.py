"""DeltaReplication.* events to ALERT_TOPIC_ENDPOINT, one per state transition."""

from __future__ import annotations

import logging

from azure.eventgrid import EventGridEvent, EventGridPublisherClient

from shared.health.lag import ReplicaHealth, ReplicaLag
from shared.health.status import ALERT_OK

log = logging.getLogger(__name__)

LAG_THRESHOLD_EXCEEDED = "DeltaReplication.LagThresholdExceeded"
DIVERGED = "DeltaReplication.Diverged"
RECOVERED = "DeltaReplication.Recovered"
GROUP_RPO_EXCEEDED = "DeltaReplication.GroupRpoExceeded"  # a group's recovery point older than rpo_threshold_seconds
CONSOLIDATION_SOURCE_UNREACHABLE = "DeltaReplication.ConsolidationSourceUnreachable"
CONSOLIDATION_SOURCE_RECOVERED = "DeltaReplication.ConsolidationSourceRecovered"
WRITES_QUARANTINED = "DeltaReplication.WritesQuarantined"  # rejoin kept a former primary's outage commits aside

REPLICATION_FAILED = "DeltaReplication.ReplicationFailed"  # status `error`: e.g. storage refused access (403)

ALERT_LAG = "lag_exceeded"
ALERT_DIVERGED = "diverged"
ALERT_ERROR = "error"


def alert_state(lag: ReplicaLag, threshold_seconds: int) -> str:
    """The alert state a measurement puts a replica in."""
    if lag.status == ReplicaHealth.DIVERGED:
        return ALERT_DIVERGED
    if lag.status == ReplicaHealth.ERROR:
        return ALERT_ERROR  # not healing by itself (access denied, an unsafe commit): a person must act
    if lag.lag_seconds > threshold_seconds:
        return ALERT_LAG
    return ALERT_OK


def transition_event(previous: str, current: str) -> str | None:
    """The event type to publish when the alert state changes, or None."""
    if previous == current:
        return None
    return {ALERT_LAG: LAG_THRESHOLD_EXCEEDED, ALERT_DIVERGED: DIVERGED, ALERT_ERROR: REPLICATION_FAILED,
            ALERT_OK: RECOVERED}[current]


def settle_alert(before: str, state: str, publish, *, describe: str) -> str:
    """The alert state to record after a transition from `before` to `state`: `state` once
    `publish()` (which sends the alert) returned, else `before`, so the next run sends it again.

    The one place this decision is made (the lag check's alerts, consolidation's, rejoin's).
    `describe`: what the alert is about, for the warning (never a secret)."""
    try:
        publish()
    except Exception as err:  # noqa: BLE001 - any failure: keep the old state, retry next run
        log.warning("alert.failed %s error=%s", describe, type(err).__name__)
        return before
    return state


class AlertPublisher:
    """Publishes alert events with azure-eventgrid (Event Grid schema)."""

    def __init__(self, client: EventGridPublisherClient) -> None:
        self._client = client

    def publish(self, event_type: str, lag: ReplicaLag, threshold_seconds: int) -> None:
        """Send one alert; raises azure.core errors so the caller keeps the old state and retries."""
        event = EventGridEvent(
            subject=f"tables/{lag.table}/replicas/{lag.replica}",
            event_type=event_type,
            data_version="1.0",
            data={
                "table": lag.table, "replica": lag.replica, "status": lag.status.value,
                "sourceVersion": lag.source_version, "replicaVersion": lag.replica_version,
                "versionLag": lag.version_lag, "lagSeconds": lag.lag_seconds,
                "lagThresholdSeconds": threshold_seconds, "checkedAt": lag.checked_at.isoformat(),
                "detail": lag.detail,
            },
        )
        self._client.send([event])
        log.info("alert.published type=%s table=%s replica=%s", event_type, lag.table, lag.replica,
                 extra={"event_type": event_type, "table": lag.table, "replica": lag.replica})

    def publish_consolidation(self, event_type: str, data: dict) -> None:
        """Send one consolidation-source alert (`data` holds consolidation, source and its state).

        Raises azure.core errors so the caller keeps the old alert state and retries next run.
        """
        event = EventGridEvent(
            subject=f"consolidations/{data['consolidation']}/sources/{data['source']}",
            event_type=event_type, data_version="1.0", data=data,
        )
        self._client.send([event])
        log.info("alert.published type=%s consolidation=%s source=%s", event_type, data["consolidation"],
                 data["source"], extra={"event_type": event_type, "consolidation": data["consolidation"],
                                        "source": data["source"]})

    def publish_event(self, event_type: str, subject: str, data: dict) -> None:
        """Send one alert with its own subject and data (failover alerts); raises azure.core errors."""
        self._client.send([EventGridEvent(subject=subject, event_type=event_type, data_version="1.0", data=data)])
        log.info("alert.published type=%s subject=%s", event_type, subject,
                 extra={"event_type": event_type, "subject": subject})
