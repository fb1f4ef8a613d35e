"""The tables a host knows in each group: found by events and by the discovery sweep, by name.

A group's table has no configuration entry: its TableConfig is derived from the group and its
path (GroupConfig.member). The catalog remembers the relative path behind each name, because the
name alone is ambiguous (`lake:a.b` is `a/b` or a folder called `a.b`). A name not known yet is
resolved by a sweep of the group's locations (the first that answers), so a CLI started during an
outage finds tables from any surviving location.

Memory: one small record (name, relative path) per table; nothing per version or file.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from shared.config.model import GroupConfig, ReplicationConfig, TableConfig, join_path
from shared.delta.log import LOG_DIR
from shared.errors import ReplicationError
from shared.groups.members import is_member, split_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdleMark:
    """A group table every replica of which was last measured at the primary's head `version` (under
    `primary` at `epoch`), with no event for it since: the lag check then only asks the primary whether
    version + 1 exists."""

    version: int
    primary: str
    epoch: int
    marked_at: float  # time.monotonic() of the full check that marked it


@dataclass(frozen=True)
class Sweep:
    """What one discovery sweep of a group saw: its tables' relative paths, and where it looked."""

    group: str
    location: str | None  # None: no location answered
    tables: tuple[str, ...]
    unreachable: tuple[str, ...] = ()
    names: frozenset[str] = frozenset()  # the tables' names


def discover(stores, group: GroupConfig, location) -> list[str]:
    """Relative paths of the group's tables at `location`: a walk of its folders below the prefix,
    stopping at each table root (a folder holding `_delta_log/`; table roots do not nest).

    Costs one listing per folder on the way to the table roots. Raises ReplicationError when the
    location does not answer.
    """
    found: list[str] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        folder = stores.folder(location, join_path(location.path, relative), label=f"{location.name}-discovery")
        children = folder.list_subfolders()
        if relative and LOG_DIR in children:
            if is_member(group, relative):
                found.append(relative)
            continue
        pending.extend(join_path(relative, c) for c in children if not c.startswith(("_", ".")))
    return sorted(found)


class GroupCatalog:
    """The known tables of every configured group (name -> relative path), shared by a host.

    Args:
        config: the replication configuration (its groups).
        stores: the runtime's store factory (discovery listings).
    """

    def __init__(self, config: ReplicationConfig, stores) -> None:
        self._config = config
        self._stores = stores
        self._lock = threading.Lock()
        self._known: dict[str, dict[str, str]] = {g.name: {} for g in config.groups}
        self._idle: dict[str, IdleMark] = {}

    def claim(self, table: TableConfig, relative: str) -> bool | None:
        """Remember a group table an event named: True when new, False when known, None when another
        folder holds its name (`a.b/c` and `a/b/c` are both `<group>:a.b.c`; the first one known keeps
        it, and the other is not replicated: one name must never mean two tables' leases and topology)."""
        with self._lock:
            members = self._known[table.group]
            holder = members.get(table.name)
            if holder is None:
                members[table.name] = relative
                return True
            return False if holder == relative else None

    def mark_idle(self, name: str, mark: IdleMark | None) -> None:
        """Remember (or with None forget) that a table was idle and caught up at its last full check."""
        with self._lock:
            if mark is None:
                self._idle.pop(name, None)
            else:
                self._idle[name] = mark

    def idle(self, name: str) -> IdleMark | None:
        with self._lock:
            return self._idle.get(name)

    def members(self, group: str) -> list[TableConfig]:
        """The known tables of `group`, by name."""
        config = self._config.group(group)
        with self._lock:
            known = sorted(self._known[group].items())
        return [config.member(relative) for _, relative in known]

    def tables(self) -> list[TableConfig]:
        return [t for g in self._config.groups for t in self.members(g.name)]

    def sweep(self, group: str, *, order: list[str] | None = None) -> Sweep:
        """Discover the group's tables at the first location (in `order`, default source then
        replicas) that answers, and remember them. Tables known before and not seen now stay known
        (a dropped table is reported, never forgotten silently)."""
        config = self._config.group(group)
        locations = [config.source, *config.replicas]
        if order:
            locations.sort(key=lambda loc: order.index(loc.name) if loc.name in order else len(order))
        unreachable = []
        for loc in locations:
            try:
                found = discover(self._stores, config, loc)
            except ReplicationError as err:
                log.warning("group.sweep_failed group=%s location=%s error=%s", group, loc.name, type(err).__name__,
                            extra={"group": group, "location": loc.name})
                unreachable.append(loc.name)
                continue
            with self._lock:
                members = self._known[group]
                for relative in found:  # in name order: of two folders with one name, the first keeps it
                    holder = members.setdefault(config.table_name(relative), relative)
                    if holder != relative:
                        log.warning("group.name_taken group=%s folder=%s name=%s held_by=%s", group, relative,
                                    config.table_name(relative), holder, extra={"group": group})
            return Sweep(group, loc.name, tuple(found), tuple(unreachable),
                         frozenset(config.table_name(r) for r in found))
        return Sweep(group, None, (), tuple(unreachable))

    def table(self, name: str) -> TableConfig:
        """The TableConfig of group table `name`, sweeping the group once when it is not known.

        Raises:
            KeyError: no group of that name, or no such table in it.
        """
        parts = split_name(name)
        if parts is None or parts[0] not in self._known:
            raise KeyError(name)
        group = parts[0]
        for attempt in (1, 2):
            with self._lock:
                relative = self._known[group].get(name)
            if relative is not None:
                return self._config.group(group).member(relative)
            if attempt == 1:
                self.sweep(group)
        raise KeyError(name)
