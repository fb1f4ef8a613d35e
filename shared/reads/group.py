"""Consistent reads of a group: one location for every table, each at that location's recovery point.

A report joining orders and customers must read one moment. The group's recovery point at a
location (shared/health/recovery_point.py) is a time every table there holds every commit up to;
reading each table at the version a timestamp query for that time returns (the newest commit at
or before it, by the commits' own times: the resolver's timestamp rule) gives that moment.

The location is chosen as a table's read is (routing, then nearby, primary, replicas), skipping a
location whose point is unknown or where some table cannot be read at the point. A table with no
commit at or before the point is listed with `version: null` and the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from shared.errors import NoReadableLocation, ReplicationError, ReplicaUnreachable
from shared.health.lag import measure_table
from shared.health.recovery_point import iso_ms, table_point
from shared.reads.resolver import SkipReason, Skipped, _Resolver, _Skip
from shared.reads.routing import preference_list
from shared.reads.timestamps import to_ms
from shared.storage.locations import abfss_uri, deltalake_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupTableRead:
    table: str
    location: str
    version: int | None
    uri: str  # abfss:// for Spark
    reason: str | None = None
    deltalake_uri: str = ""

    def as_json(self) -> dict:
        doc = {"table": self.table, "location": self.location, "version": self.version, "uri": self.uri}
        if self.reason is not None:
            doc["reason"] = self.reason
        return doc


@dataclass(frozen=True)
class GroupResolution:
    group: str
    location: str
    recovery_point: datetime
    tables: tuple[GroupTableRead, ...]
    tried: tuple[Skipped, ...] = field(default=())

    def as_json(self) -> dict:
        return {"group": self.group, "location": self.location, "recoveryPoint": iso_ms(self.recovery_point),
                "tables": [t.as_json() for t in self.tables], "tried": [t.as_json() for t in self.tried]}


def recovery_points(runtime, members, now: datetime) -> tuple[dict[str, datetime | None], dict[str, _Resolver]]:
    """Each location's group point now (None: not known), and each table's resolver (its topology,
    read as a reader reads it). A table's primary holds all of it: no constraint there."""
    behind: dict[str, list[datetime | None]] = {}
    locations: list[str] = []
    resolvers = {}
    for table in members:
        resolver = _Resolver(runtime, table, status=None, now=now)
        resolvers[table.name] = resolver
        rows = resolver.status_rows()
        locations.append(resolver.primary.name)
        for lag in measure_table(runtime.replicator(table.name, resolver.known.topology), now=now):
            locations.append(lag.replica)
            moment, is_behind = table_point(lag, rows.get(lag.replica))
            if is_behind:
                behind.setdefault(lag.replica, []).append(moment)
    points = {}
    for location in locations:
        moments = behind.get(location, [])
        points[location] = None if any(m is None for m in moments) else min(moments, default=now)
    return points, resolvers


def resolve_group(runtime, group_name: str, *, region: str | None = None,
                  now: datetime | None = None) -> GroupResolution:
    """The location a reader in `region` should read the whole group from, and each table's version there.

    Raises:
        KeyError: no such group.
        NoReadableLocation: the group has no table yet, or no location can serve every table at
            its point; `tried` lists each location with the reason.
    """
    group = runtime.config.group(group_name)
    now = now or datetime.now(timezone.utc)
    runtime.groups.sweep(group_name)
    members = runtime.groups.members(group_name)
    if not members:
        raise NoReadableLocation(f"group {group_name} has no tables yet (none found under its prefix)", [])
    points, resolvers = recovery_points(runtime, members, now)
    first = resolvers[members[0].name]
    tried: list[Skipped] = []
    for loc in preference_list(members[0], region, primary=first.primary):
        point = points.get(loc.name)
        if point is None:
            tried.append(Skipped(loc.name, SkipReason.STALENESS_UNKNOWN,
                                 "the group's recovery point here is not known (a table there was never measured "
                                 "caught up and cannot be measured now)"))
            continue
        try:
            reads = tuple(_table_at(runtime, resolvers[t.name], t.location(loc.name), point) for t in members)
        except _Skip as skip:
            tried.append(Skipped(loc.name, skip.reason, skip.detail))
            continue
        log.info("read.group_resolved group=%s region=%s location=%s recovery_point=%s tables=%d", group.name,
                 region, loc.name, iso_ms(point), len(reads), extra={"group": group.name, "location": loc.name})
        return GroupResolution(group.name, loc.name, point, reads, tuple(tried))
    listing = "; ".join(f"{t.location}: {t.reason.value} ({t.detail})" for t in tried)
    raise NoReadableLocation(f"no location can serve a consistent read of group {group_name}; tried {listing}", tried)


def _table_at(runtime, resolver: _Resolver, loc, point: datetime) -> GroupTableRead:
    """One table's version at `point` on `loc` (raises _Skip when the location cannot serve it)."""
    uri, dl_uri = abfss_uri(runtime.settings[loc.connection], loc), deltalake_uri(loc)
    try:
        primary_head, primary_error = resolver.primary_head(), None
    except ReplicaUnreachable as err:
        primary_head, primary_error = None, err
    try:
        version, _, _ = resolver.evaluate(loc, primary_head, primary_error, max_staleness_seconds=None,
                                          min_version=None, version=None, timestamp_ms=to_ms(point))
    except _Skip as skip:
        if skip.reason == SkipReason.VERSION_UNAVAILABLE and "is before version" in skip.detail:
            return GroupTableRead(resolver.table.name, loc.name, None, uri,
                                  f"no commit at or before the recovery point: {skip.detail}", dl_uri)
        raise _Skip(skip.reason, f"table {resolver.table.name}: {skip.detail}") from None
    except (ReplicaUnreachable, ReplicationError) as err:
        raise _Skip(SkipReason.UNREACHABLE, f"table {resolver.table.name}: {err}") from None
    return GroupTableRead(resolver.table.name, loc.name, version, uri, None, dl_uri)


def parse_group_query(params) -> tuple[str, str | None]:
    """(group, region) of a consistent group read's query (`group`, `consistent=true`, optional `region`).

    Raises:
        ValueError: `consistent` is not true, or another parameter is present; says what to send.
    """
    problems = [f"parameter {k!r} does not apply to a consistent group read (send group, consistent=true and "
                "optionally region)" for k in params if k not in ("group", "consistent", "region")]
    if (params.get("consistent") or "").strip().lower() != "true":
        problems.append("a group read needs consistent=true (every table at the group's recovery point); for one "
                        "table's newest data leave out group")
    group = (params.get("group") or "").strip()
    if not group:
        problems.append("group is empty; send the group's name")
    if problems:
        raise ValueError("; ".join(problems))
    return group, (params.get("region") or "").strip() or None
