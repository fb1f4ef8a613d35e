"""A group's recovery point per location: the one moment every table of the group can be read at.

For a location other than a table's primary, the table's own point is the instant before which the
location holds every commit of it: the check time when it is caught up, else just before the
commit time of the oldest commit it lacks (in-commit timestamp, else commitInfo.timestamp; the lag
measurement reads it), and when the location cannot be measured now (unreachable, diverged) the
point last known (status rows' CaughtUpAt): a replica never loses commits, so that is still true.
The group's point at a location is the oldest of its tables' points: every table holds every
commit made at or before it. A table with no known point makes the group's point unknown (None).

The ReplicationGroupStatus table (function app storage) keeps the last measurement per group and
location, with the alert state, so DeltaReplication.GroupRpoExceeded fires once per transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient, UpdateMode

from shared.health.lag import ReplicaHealth, ReplicaLag
from shared.health.status import ALERT_OK, StatusRow
from shared.storage.host_table import HostTable

GROUP_STATUS_TABLE = "ReplicationGroupStatus"
ALERT_RPO = "rpo_exceeded"
_MS = timedelta(milliseconds=1)


def iso_ms(moment: datetime | None) -> str | None:
    """ISO 8601 UTC to the millisecond, as the status JSON writes a recovery point."""
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class GroupPoint:
    """One location's recovery point for one group, measured at `checked_at`."""

    group: str
    replica: str
    recovery_point: datetime | None  # None: some table's point is not known
    checked_at: datetime
    tables: int
    tables_behind: int

    @property
    def age_seconds(self) -> float | None:
        if self.recovery_point is None:
            return None
        return round(max(0.0, (self.checked_at - self.recovery_point).total_seconds()), 3)

    def exceeds(self, threshold_seconds: int | None) -> bool:
        if threshold_seconds is None:
            return False
        return self.recovery_point is None or self.age_seconds > threshold_seconds

    def as_json(self) -> dict:
        return {"group": self.group, "replica": self.replica, "recoveryPoint": iso_ms(self.recovery_point),
                "recoveryPointAgeSeconds": self.age_seconds, "tables": self.tables,
                "tablesBehind": self.tables_behind}


def table_point(lag: ReplicaLag, previous: StatusRow | None) -> tuple[datetime | None, bool]:
    """(the table's point at the replica, whether the replica is behind) from one measurement."""
    if lag.status == ReplicaHealth.HEALTHY:
        return lag.checked_at, False
    if lag.status == ReplicaHealth.LAGGING:
        since = lag.missing_since or lag.checked_at - timedelta(seconds=lag.lag_seconds)
        return since - _MS, True
    known = previous.caught_up_at if previous is not None else None
    return (datetime.fromisoformat(known) - _MS if known else None), True


def group_points(group, lags: list[ReplicaLag], previous: dict[tuple[str, str], StatusRow],
                 now: datetime) -> list[GroupPoint]:
    """The group's point at each location that is some table's replica (`lags`: one measurement per
    table and replica of the group; dropped tables are left out). Locations in configuration order."""
    order = [loc.name for loc in group.locations]
    by_replica: dict[str, list[ReplicaLag]] = {}
    for lag in lags:
        if lag.status != ReplicaHealth.DROPPED:
            by_replica.setdefault(lag.replica, []).append(lag)
    points = []
    for replica in sorted(by_replica, key=lambda r: order.index(r) if r in order else len(order)):
        measured = [table_point(lag, previous.get((lag.table, replica))) for lag in by_replica[replica]]
        behind = [moment for moment, is_behind in measured if is_behind]
        if any(moment is None for moment in behind):
            point = None
        else:
            point = min(behind, default=now)
        points.append(GroupPoint(group.name, replica, point, now, len(measured), len(behind)))
    return points


class GroupStatusStore(HostTable):
    """Rows of ReplicationGroupStatus: PartitionKey group, RowKey location; RecoveryPoint (ISO, empty when
    unknown), AgeSeconds, Tables, TablesBehind, CheckedAt, AlertState."""

    def __init__(self, service: TableServiceClient, *, table_name: str = GROUP_STATUS_TABLE) -> None:
        super().__init__(service, table_name)

    def put(self, point: GroupPoint, *, alert_state: str) -> None:
        self._ensure_table()
        with self._errors(f"recording the recovery point of group {point.group} at {point.replica}"):
            self._table.upsert_entity({
                "PartitionKey": point.group, "RowKey": point.replica,
                "RecoveryPoint": iso_ms(point.recovery_point) or "", "AgeSeconds": point.age_seconds or -1.0,
                "Tables": point.tables, "TablesBehind": point.tables_behind,
                "CheckedAt": point.checked_at.isoformat(), "AlertState": alert_state,
            }, mode=UpdateMode.REPLACE)

    def rows(self, group: str | None = None) -> list[tuple[GroupPoint, str]]:
        """(point, alert state) of every row, or of one group's; empty before the first lag check."""
        try:
            with self._errors("reading the group recovery points"):
                if group is None:
                    entities = list(self._table.list_entities())
                else:
                    entities = list(self._table.query_entities("PartitionKey eq @pk", parameters={"pk": group}))
        except ResourceNotFoundError:
            return []
        found = []
        for e in entities:
            point = datetime.fromisoformat(e["RecoveryPoint"].replace("Z", "+00:00")) if e.get("RecoveryPoint") else None
            found.append((GroupPoint(e["PartitionKey"], e["RowKey"], point, datetime.fromisoformat(e["CheckedAt"]),
                                     int(e.get("Tables", 0)), int(e.get("TablesBehind", 0))),
                          e.get("AlertState") or ALERT_OK))
        return found
