"""Compare source and replica versions -> ReplicaLag, healing lagging replicas first.

Time lag is measured from the commit time of the oldest primary commit the replica lacks:
its in-commit timestamp when the table has them, else commitInfo.timestamp, else the
blob's Last-Modified. A caught-up replica has time lag 0.
"""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from shared.delta.head import find_head, find_latest_version, find_source_head
from shared.delta.log import commit_name
from shared.delta.source_log import SourceLog
from shared.errors import AccessDenied, ReplicaDiverged, ReplicationError, ReplicaUnreachable
from shared.replication.history import missing_history
from shared.replication.outcome import ReplicaOutcome, ReplicaState
from shared.replication.replicator import TableReplicator

log = logging.getLogger(__name__)


class ReplicaHealth(enum.Enum):
    HEALTHY = "healthy"
    LAGGING = "lagging"
    DIVERGED = "diverged"
    UNREACHABLE = "unreachable"
    ERROR = "error"
    DROPPED = "dropped"  # a group's table whose log is gone from its primary; replicas kept


@dataclass(frozen=True)
class ReplicaLag:
    """One replica's position relative to its primary at `checked_at`."""

    table: str
    replica: str
    source_version: int | None
    replica_version: int | None
    version_lag: int
    lag_seconds: float
    status: ReplicaHealth
    checked_at: datetime
    detail: str = ""
    missing_since: datetime | None = None  # commit time of the oldest commit it lacks (None: none, or unknown)


def commit_time(source: SourceLog, version: int) -> datetime | None:
    """When `version` was committed on the primary (see module docstring for the order)."""
    try:
        data = source.commit_bytes(version)
    except ReplicationError:
        return None
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            action = json.loads(line)
        except json.JSONDecodeError:
            continue
        info = action.get("commitInfo") if isinstance(action, dict) else None
        if isinstance(info, dict):
            ms = info.get("inCommitTimestamp", info.get("timestamp"))
            if isinstance(ms, (int, float)):  # exact to the millisecond (ms / 1000 as a float is not)
                return datetime.fromtimestamp(int(ms) // 1000, timezone.utc) + timedelta(milliseconds=int(ms) % 1000)
    entry = next((e for e in source.entries_for(version, version) if e.name == commit_name(version)), None)
    return entry.last_modified if entry else None


def refused_access(err: ReplicationError) -> bool:
    """A 401/403: the location answered and refused us. Not an outage: a key or a role to fix.
    (AccessDenied once storage raises it; until then the HTTP status of the chained SDK error.)"""
    return isinstance(err, AccessDenied) or getattr(err.__cause__, "status_code", None) in (401, 403)


def _reason(err: ReplicationError) -> str:
    hint = getattr(err, "hint", "")
    text = str(err) if not hint or hint in str(err) else f"{err} {hint}"
    return f"access denied: {text}" if refused_access(err) else text


def measure_table(replicator: TableReplicator, *, previous_versions: dict[str, int | None] | None = None,
                  outcomes: list[ReplicaOutcome] | None = None, now: datetime | None = None) -> list[ReplicaLag]:
    """Measure every replica of one table.

    Args:
        replicator: the table's replicator (its stores and configuration).
        previous_versions: replica -> last known version, used when a replica is unreachable.
        outcomes: the outcomes of a healing pass just run, whose errors set the status.
        now: the measurement time (default: now).

    Returns:
        One ReplicaLag per replica, in configuration order.
    """
    now = now or datetime.now(timezone.utc)
    table = replicator.table
    source = SourceLog(table, replicator.source_store, replicator.root)
    by_replica = {o.replica: o for o in outcomes or []}
    try:
        source_head = find_source_head(source)
    except ReplicationError as err:
        return [ReplicaLag(table.name, name, None, (previous_versions or {}).get(name), 0, 0.0,
                           ReplicaHealth.ERROR, now, f"primary unreadable: {_reason(err)}")
                for name in replicator.replicas]
    results = []
    for name, store in replicator.replicas.items():
        outcome = by_replica.get(name)
        detail = ""
        status: ReplicaHealth | None = None
        try:
            head, entries = find_head(store, source_head if source_head is not None else 0)
            if head is not None and source_head is not None:
                # find_head looks at the window around the primary's head; a replica past that
                # window (the primary at 9, the replica at 11) is found by listing forward.
                latest = max(head, find_latest_version(store) or 0)
                if latest > source_head:
                    raise ReplicaDiverged(f"replica {name} is at version {latest}, ahead of the primary's "
                                          f"{source_head}: it holds commits the primary does not (rejoin it)")
                replicator.check_head_matches(name, store, source, head, source_head, entries)
        except ReplicaDiverged as err:
            head, status, detail = None, ReplicaHealth.DIVERGED, str(err)
        except (ReplicaUnreachable, AccessDenied) as err:
            status = ReplicaHealth.ERROR if refused_access(err) else ReplicaHealth.UNREACHABLE
            head, detail = (previous_versions or {}).get(name), _reason(err)
        if outcome is not None and outcome.error is not None and status is None:
            if outcome.state == ReplicaState.DIVERGED:
                status = ReplicaHealth.DIVERGED
            elif isinstance(outcome.error, ReplicaUnreachable):
                status = ReplicaHealth.UNREACHABLE
            else:
                status = ReplicaHealth.ERROR
            detail = str(outcome.error)
        if status is None and head is not None and table.history == "full":
            try:
                missing = missing_history(store, source, head)
            except ReplicaUnreachable as err:
                status, detail = ReplicaHealth.UNREACHABLE, str(err)
            except AccessDenied as err:
                status, detail = ReplicaHealth.ERROR, str(err)
            else:
                detail = missing.detail if missing is not None else ""  # e.g. "history backfilling: versions 0..9"
        if source_head is None:
            version_lag = 0
        else:
            version_lag = source_head - head if head is not None else source_head + 1
        lag_seconds = 0.0
        committed = None
        if version_lag > 0:
            missing = 0 if head is None else head + 1
            committed = commit_time(source, missing)
            if committed is not None:
                lag_seconds = max(0.0, (now - committed).total_seconds())
        if status is None:
            status = ReplicaHealth.LAGGING if version_lag > 0 else ReplicaHealth.HEALTHY
        results.append(ReplicaLag(table.name, name, source_head, head, version_lag, round(lag_seconds, 3),
                                  status, now, detail[:1000], committed))
    return results
