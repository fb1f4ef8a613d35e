"""A failover drill of a group: rehearse promoting it to one location, change nothing, and write evidence.

Per table it checks that the target reads at its head (deltalake loads its log there), what a forced
promote would lose right now (the primary's versions the target lacks, and the rows their commits
add, from the commits' `numRecords` statistics), and how long the target took to answer the reads a
forced promote makes before its flip (head lookup, fence check); for the group, the recovery point at
the target and its age. Only reads: no lease, no flip, no fence, no write anywhere.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from deltalake import DeltaTable

from shared.delta.head import find_latest_version, find_source_head
from shared.delta.log import commit_name, parse_commit
from shared.delta.source_log import SourceLog
from shared.errors import ReplicationError
from shared.health.lag import measure_table
from shared.health.recovery_point import iso_ms, table_point
from shared.storage.locations import deltalake_options, deltalake_uri

log = logging.getLogger(__name__)


@dataclass
class TableDrill:
    table: str
    primary: str
    target_head: int | None
    primary_head: int | None
    readable: bool
    versions_lost: int | None  # None: the primary did not answer (what it holds beyond is unknown)
    rows_lost: int | None
    writable_in_seconds: float
    problem: str | None = None

    def as_json(self) -> dict:
        return {"table": self.table, "primary": self.primary, "targetHead": self.target_head,
                "primaryHead": self.primary_head, "readsAtHead": self.readable, "versionsLost": self.versions_lost,
                "rowsLost": self.rows_lost, "writableInSeconds": round(self.writable_in_seconds, 3),
                "problem": self.problem}


@dataclass
class GroupDrill:
    group: str
    target: str
    started_at: datetime
    recovery_point: datetime | None
    tables: list[TableDrill] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return bool(self.tables) and all(t.readable for t in self.tables)

    def as_json(self) -> dict:
        age = None if self.recovery_point is None else round((self.started_at - self.recovery_point).total_seconds(), 3)
        return {"group": self.group, "target": self.target, "startedAt": self.started_at.isoformat(),
                "usable": self.usable, "recoveryPoint": iso_ms(self.recovery_point), "recoveryPointAgeSeconds": age,
                "tables": [t.as_json() for t in self.tables],
                "versionsLost": _total(t.versions_lost for t in self.tables),
                "rowsLost": _total(t.rows_lost for t in self.tables),
                "writableInSeconds": round(sum(t.writable_in_seconds for t in self.tables), 3)}

    def markdown(self) -> str:
        doc = self.as_json()
        lines = [f"# Failover drill: group {self.group} to {self.target}", "",
                 f"- Started: {doc['startedAt']}; nothing was changed (reads only).",
                 f"- Verdict: {'the target is usable' if self.usable else '**the target is NOT usable**'} "
                 f"({sum(t.readable for t in self.tables)} of {len(self.tables)} tables read at their head there).",
                 f"- Group recovery point at {self.target}: {doc['recoveryPoint'] or 'unknown'} "
                 f"(age {doc['recoveryPointAgeSeconds']} s).",
                 f"- A forced promote now would lose {doc['versionsLost']} version(s), {doc['rowsLost']} row(s) "
                 "(kept in the old primary, quarantined at rejoin, replayable).",
                 f"- Making the target writable: about {doc['writableInSeconds']} s of reads before the flips "
                 "(measured now), plus one topology write per table.", "",
                 "| table | primary | target head | primary head | reads at head | versions lost | rows lost | "
                 "seconds | problem |", "|---|---|---:|---:|---|---:|---:|---:|---|"]
        for t in self.tables:
            lines.append(f"| {t.table} | {t.primary} | {t.target_head} | {t.primary_head} | "
                         f"{'yes' if t.readable else 'NO'} | {t.versions_lost} | {t.rows_lost} | "
                         f"{t.writable_in_seconds:.3f} | {t.problem or ''} |")
        return "\n".join(lines) + "\n"


def _total(values):
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def drill_group(runtime, group_name: str, target: str) -> GroupDrill:
    """Rehearse promoting every table of the group to `target` (see the module docstring).

    Raises:
        KeyError: no such group; ValueError: the group has no location `target`.
    """
    group = runtime.config.group(group_name)
    if target not in [loc.name for loc in group.locations]:
        raise ValueError(f"group {group_name} has no location {target!r} (locations: "
                         f"{', '.join(loc.name for loc in group.locations)})")
    started = datetime.now(timezone.utc)
    # The source's tables (a table the target lacks entirely is a finding) and the target's (the source
    # may not answer in a failover): each sweep adds to what the catalog knows.
    runtime.groups.sweep(group_name)
    runtime.groups.sweep(group_name, order=[target])
    result = GroupDrill(group_name, target, started, None)
    behind: list[datetime | None] = []
    for table in runtime.groups.members(group_name):
        drilled, moment = _drill_table(runtime, table, target, started)
        result.tables.append(drilled)
        if moment is not _CAUGHT_UP:
            behind.append(moment)
    result.recovery_point = None if any(m is None for m in behind) else min(behind, default=started)
    log.warning("drill.done group=%s target=%s usable=%s tables=%d", group_name, target, result.usable,
                len(result.tables), extra={"group": group_name, "target": target})
    return result


_CAUGHT_UP = object()  # a table that constrains the group's point nowhere (the target is its primary, or caught up)


def _drill_table(runtime, table, target: str, now: datetime):
    topology = runtime.topology(table.name)
    replicator = runtime.replicator(table.name, topology)
    loc = table.location(target)
    started = time.monotonic()
    store = runtime.stores.table(loc)
    problem = None
    try:
        target_head = find_latest_version(store)
    except ReplicationError as err:
        target_head, problem = None, f"the target does not answer: {err}"
    writable = time.monotonic() - started
    readable = False
    if target_head is not None:
        try:
            loaded = DeltaTable(deltalake_uri(loc), storage_options=deltalake_options(runtime.settings[loc.connection]))
            readable = loaded.version() == target_head
            if not readable:
                problem = f"deltalake read version {loaded.version()} there, not its head {target_head}"
        except Exception as err:  # noqa: BLE001 - any failure to load is the finding
            problem = f"deltalake cannot read it at its head: {type(err).__name__}: {str(err)[:300]}"
    elif problem is None:
        problem = "the target holds no version of the table"
    primary_head = versions_lost = rows_lost = None
    moment = _CAUGHT_UP
    if topology.primary == target:
        primary_head, versions_lost, rows_lost = target_head, 0, 0
    else:
        source = SourceLog(table, replicator.source_store, replicator.root)
        try:
            primary_head = find_source_head(source)
            missing = range((target_head if target_head is not None else -1) + 1, (primary_head or -1) + 1)
            versions_lost, rows_lost = len(missing), sum(_rows_added(source, v) for v in missing)
        except ReplicationError:
            pass  # unknown: reported as None
        lags = [lag for lag in measure_table(replicator, now=now) if lag.replica == target]
        if lags:
            point, is_behind = table_point(lags[0], None)
            moment = point if is_behind else _CAUGHT_UP
    return TableDrill(table.name, topology.primary, target_head, primary_head, readable, versions_lost, rows_lost,
                      writable, problem), moment


def _rows_added(source: SourceLog, version: int) -> int:
    """Rows a commit adds, from its add actions' statistics (0 for an add without them)."""
    data = source.store.get_log_file(commit_name(version))
    rows = 0
    for action in parse_commit(data, where=f"version {version}"):
        add = action.get("add") if isinstance(action, dict) else None
        if isinstance(add, dict) and add.get("dataChange", True) and isinstance(add.get("stats"), str):
            try:
                rows += int(json.loads(add["stats"]).get("numRecords", 0))
            except (ValueError, TypeError, AttributeError):
                continue
    return rows
