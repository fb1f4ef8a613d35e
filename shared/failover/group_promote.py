"""Fail a whole group over at once: every table of it to one location, optionally at one moment.

A planned group promote first brings the target of every table to its primary's head and flips
none unless all got there (the writers have stopped). A forced one flips each table at the
target's own head. With `consistent`, the target's versions above the group's recovery point at
the target (shared/health/recovery_point.py) are first quarantined there, as rejoin quarantines a
deposed primary's (`_quarantine/<table path>/epoch-<E>/`, E the epoch the flip starts: listed
and replayed with `quarantine list|replay --epoch E`), so every new primary stands at one moment
and nothing is lost. Trim and flip happen under the target's replica lease: no catch-up puts the
trimmed commits back in between.

One group record (the ReplicationGroupTopology table: primary, epoch, state) is written before the
first flip (`flipping`) and after the last (`done`). Azure Tables cannot flip rows of many
partitions in one transaction, so a run cut short leaves the record `flipping` with some tables
flipped; the same command again skips the flipped ones and finishes the rest (the per-table rows
stay the truth for each table; the record says what was intended).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import UpdateMode

from shared.delta.head import find_latest_version
from shared.delta.source_log import SourceLog
from shared.errors import PromotionRefused, ReplicationError
from shared.failover.lineage import QuarantinePlan
from shared.failover.promote import _check_target, _wait_for_head, promote
from shared.failover.rejoin import _quarantine, _remove, _repair_last_checkpoint, quarantine_store
from shared.health.lag import commit_time, measure_table
from shared.health.recovery_point import iso_ms, table_point
from shared.storage.host_table import HostTable

log = logging.getLogger(__name__)

GROUP_TOPOLOGY_TABLE = "ReplicationGroupTopology"


class GroupRecords(HostTable):
    """ReplicationGroupTopology: PartitionKey group, RowKey "current"; Primary, Epoch (one per group promote),
    State (flipping, done), Forced, Consistent, RecoveryPoint, Tables, StartedAt, FinishedAt."""

    def __init__(self, service, *, table_name: str = GROUP_TOPOLOGY_TABLE) -> None:
        super().__init__(service, table_name)

    def get(self, group: str) -> dict | None:
        try:
            with self._errors(f"reading the group record of {group}"):
                return dict(self._table.get_entity(group, "current"))
        except ResourceNotFoundError:
            return None

    def put(self, group: str, **columns) -> None:
        self._ensure_table()
        with self._errors(f"recording the group promote of {group}"):
            self._table.upsert_entity({"PartitionKey": group, "RowKey": "current", **columns}, mode=UpdateMode.MERGE)


@dataclass
class GroupPromoteResult:
    group: str
    to: str
    epoch: int
    forced: bool
    consistent: bool
    recovery_point: datetime | None = None
    tables: list[dict] = field(default_factory=list)  # one promote result per flipped table
    already: list[str] = field(default_factory=list)  # tables whose primary was `to` already

    def as_json(self) -> dict:
        return {"group": self.group, "to": self.to, "groupEpoch": self.epoch, "forced": self.forced,
                "consistent": self.consistent, "recoveryPoint": iso_ms(self.recovery_point), "tables": self.tables,
                "alreadyPrimary": self.already}


def promote_group(runtime, group_name: str, to: str, *, force: bool = False, consistent: bool = False,
                  timeout: float = 300.0) -> GroupPromoteResult:
    """Make `to` the primary of every table of group `group_name`.

    Raises:
        PromotionRefused: no such group or location, no table found, or (planned) some table's primary
            does not answer or its target did not catch up in time: nothing was flipped.
        ReplicationError: storage failures (retryable: run it again; flipped tables are skipped).
    """
    try:
        group = runtime.config.group(group_name)
    except KeyError:
        raise PromotionRefused(f"group {group_name!r} is not configured; nothing was changed.") from None
    if to not in [loc.name for loc in group.locations]:
        raise PromotionRefused(f"group {group_name} has no location {to!r} (locations: "
                               f"{', '.join(loc.name for loc in group.locations)}); nothing was changed.")
    # The source's tables (a table the target lacks entirely is a finding) and the target's (the source
    # may not answer in a failover): each sweep adds to what the catalog knows.
    runtime.groups.sweep(group_name)
    runtime.groups.sweep(group_name, order=[to])
    members = runtime.groups.members(group_name)
    if not members:
        raise PromotionRefused(f"group {group_name} has no tables at any location that answered; nothing was changed.")
    topologies = {t.name: runtime.topology(t.name) for t in members}
    pending = [t for t in members if topologies[t.name].primary != to]
    records = GroupRecords(runtime.table_service())
    previous = records.get(group_name) or {}
    epoch = int(previous.get("Epoch", 0)) + (0 if previous.get("State") == "flipping" and previous.get("Primary") == to
                                             else 1)
    result = GroupPromoteResult(group_name, to, epoch, force, consistent,
                                already=[t.name for t in members if t not in pending])
    if not force:  # planned: every target at its primary's head first, or nothing flips
        for t in pending:
            _check_target(runtime, t.name, to)
            replicator = runtime.replicator(t.name, topologies[t.name])
            _wait_for_head(runtime, t.name, topologies[t.name], replicator, to, timeout, None)
    point = _group_point(runtime, members, topologies, to) if consistent else None
    result.recovery_point = point
    records.put(group_name, Primary=to, Epoch=epoch, State="flipping", Forced=force, Consistent=consistent,
                RecoveryPoint=iso_ms(point) or "", Tables=len(members),
                StartedAt=datetime.now(timezone.utc).isoformat(), FinishedAt="")
    for t in pending:
        topology = topologies[t.name]
        replicator = runtime.replicator(t.name, topology)
        target = replicator.replicas[to]
        quarantined: list[int] = []
        if point is None:
            flipped = promote(runtime, t.name, to, force=force, timeout=timeout)
        else:
            # Flipped at the trimmed head (forced), under the target's lease: no catch-up puts the trimmed
            # commits back between the trim and the flip (after it, the write fence refuses them).
            with replicator.lease(target):
                quarantined = _trim_to_point(runtime, t, topology, replicator, target, to, point)
                flipped = promote(runtime, t.name, to, force=force or bool(quarantined), timeout=timeout)
        result.tables.append({**flipped.as_json(), "quarantinedVersions": quarantined})
    records.put(group_name, State="done", FinishedAt=datetime.now(timezone.utc).isoformat())
    log.warning("promote.group_done group=%s primary=%s epoch=%d tables=%d flipped=%d forced=%s consistent=%s "
                "recovery_point=%s", group_name, to, epoch, len(members), len(pending), force, consistent,
                iso_ms(point), extra={"group": group_name, "primary": to})
    return result


def _group_point(runtime, members, topologies, to: str) -> datetime:
    """The group's recovery point at `to` now (every table measured); refuses when it is unknown."""
    now = datetime.now(timezone.utc)
    behind = []
    for t in members:
        if topologies[t.name].primary == to:
            continue
        lags = [lag for lag in measure_table(runtime.replicator(t.name, topologies[t.name]), now=now)
                if lag.replica == to]
        previous = _status_row(runtime, t.name, to)
        for lag in lags:
            moment, is_behind = table_point(lag, previous)
            if is_behind:
                if moment is None:
                    raise PromotionRefused(
                        f"the group's recovery point at {to} is not known: table {t.name} there was never measured "
                        "caught up and cannot be measured now. Promote without --consistent, or per table. Nothing "
                        "was changed.")
                behind.append(moment)
    return min(behind, default=now)


def _status_row(runtime, table: str, replica: str):
    try:
        rows = runtime.status_store().list_rows(table=table)
    except ReplicationError:
        return None
    return next((r for r in rows if r.replica == replica), None)


def _trim_to_point(runtime, table, topology, replicator, target, to: str, point: datetime) -> list[int]:
    """Quarantine the target's versions committed after `point` (newest first until one is at or before it);
    returns them. The quarantine is filed under the epoch the flip starts."""
    head = find_latest_version(target)
    if head is None:
        return []
    source = SourceLog(table, target, replicator.root)
    keep = head
    while keep >= 0:
        committed = commit_time(source, keep)
        if committed is None or committed <= point:
            break
        keep -= 1
    versions = list(range(keep + 1, head + 1))
    if not versions:
        return []
    loc = table.location(to)
    plan = QuarantinePlan(versions, target.list_log(), topology.epoch + 1, keep)
    qstore = quarantine_store(runtime, loc, plan.epoch)
    _quarantine(runtime, table, loc, topology, plan, target, qstore, versions, plan.entries, None, lambda: None)
    _repair_last_checkpoint(target, keep)
    _remove(target, plan.entries, versions, lambda: None)
    log.warning("promote.group_trimmed table=%s location=%s kept=%d quarantined=%s", table.name, to, keep, versions,
                extra={"table": table.name, "location": to})
    return versions


@dataclass
class GroupRejoinResult:
    group: str
    location: str
    tables: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"group": self.group, "location": self.location, "tables": self.tables, "failed": self.failed}


def rejoin_group(runtime, group_name: str, location: str) -> GroupRejoinResult:
    """Rejoin `location` in every table of the group that was promoted away from it (each quarantines what it
    holds beyond its promotion); one table's failure does not stop the others (`failed`, with the reason)."""
    from shared.failover.rejoin import rejoin

    try:
        group = runtime.config.group(group_name)
    except KeyError:
        raise PromotionRefused(f"group {group_name!r} is not configured; nothing was changed.") from None
    if location not in [loc.name for loc in group.locations]:
        raise PromotionRefused(f"group {group_name} has no location {location!r}; nothing was changed.")
    for loc in group.locations:  # every table any location holds: the primary's, and the rejoining one's
        runtime.groups.sweep(group_name, order=[loc.name])
    result = GroupRejoinResult(group_name, location)
    for t in runtime.groups.members(group_name):
        topology = runtime.topology(t.name)
        if topology.primary == location or topology.epoch == 0:
            continue
        try:
            result.tables.append(rejoin(runtime, t.name, location).as_json())
        except ReplicationError as err:
            result.failed.append({"table": t.name, "error": str(err), "reason": type(err).__name__})
    return result
