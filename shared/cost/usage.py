"""Measured bytes per location, from listings: live table files, files kept only for history, snapshots.

- *live*: what a reader of the newest version needs: the data and deletion-vector files its
  add actions reference, and the log from the newest complete checkpoint on (checkpoint
  parts, `_sidecars/`, later commits, `_last_checkpoint`);
- *history*: everything else under the table root: files that removed actions left for
  time travel until VACUUM, change data files, older commits, checkpoints and `.crc` files,
  and replication's own `_replication/` folder (a zero-byte lease);
- *snapshots*: the snapshot folders of a table whose `snapshots` block names this location.

live + history is exactly the sum of the blob sizes under the table root.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import unquote

from shared.delta.head import find_latest_version
from shared.delta.log import LogFileKind, deletion_vector_path, parse_log_name
from shared.delta.source_log import complete_checkpoints
from shared.delta.table_state import table_state
from shared.storage.table_store import LogEntry

log = logging.getLogger(__name__)

LOG_PREFIX = "_delta_log/"


@dataclass(frozen=True)
class LocationUsage:
    """Bytes one location of one table holds, by category."""

    table: str
    location: str
    role: str  # "source" or "replica"
    region: str | None
    version: int | None
    live_bytes: int
    history_bytes: int
    snapshot_bytes: int
    table_files: int
    snapshot_files: int

    @property
    def table_bytes(self) -> int:
        """Every blob under the table root: live + history."""
        return self.live_bytes + self.history_bytes


def live_paths(store, version: int, entries) -> set[str]:
    """Table-relative paths a reader of `version` needs (data, deletion vectors, the log from the last checkpoint)."""
    state = table_state(store, version)
    paths: set[str] = set()
    for add in state.adds.values():
        path = add["path"]
        if "://" not in path:
            paths.add(unquote(path))
        dv = add.get("deletionVector")
        if dv:
            dv_path = deletion_vector_path(dv)
            if dv_path is not None and "://" not in dv_path:
                paths.add(dv_path)
    log_entries = [LogEntry(e.name[len(LOG_PREFIX):], e.size) for e in entries if e.name.startswith(LOG_PREFIX)]
    checkpoints = {v: names for v, names in complete_checkpoints(log_entries).items() if v <= version}
    base = max(checkpoints) if checkpoints else -1
    for name in checkpoints.get(base, []):
        paths.add(LOG_PREFIX + name)
    for entry in log_entries:
        lf = parse_log_name(entry.name)
        if entry.name == "_last_checkpoint" or entry.name.startswith("_sidecars/"):
            paths.add(LOG_PREFIX + entry.name)
        elif lf is not None and lf.kind == LogFileKind.COMMIT and base < lf.version <= version:
            paths.add(LOG_PREFIX + entry.name)
    return paths


def measure_location(table_name: str, location, store, *, role: str, snapshot_store=None,
                     exclude_prefix: str | None = None) -> LocationUsage:
    """List one location (and its snapshots) and split the bytes into live, history and snapshots.

    Args:
        store: the location's TableStore (list_files, list_log, get_log_file...).
        snapshot_store: a store rooted at the table's snapshot folder in this location, or None.
        exclude_prefix: a table-relative folder not to count as the table's (snapshots kept
            inside the table root are counted once, as snapshots).
    """
    entries = [e for e in store.list_files("") if not (exclude_prefix and e.name.startswith(exclude_prefix))]
    version = find_latest_version(store) if entries else None
    needed = live_paths(store, version, entries) if version is not None else set()
    live = sum(e.size or 0 for e in entries if e.name in needed)
    total = sum(e.size or 0 for e in entries)
    snapshot_entries = snapshot_store.list_files("") if snapshot_store is not None else []
    usage = LocationUsage(
        table=table_name, location=location.name, role=role, region=location.region, version=version,
        live_bytes=live, history_bytes=total - live, snapshot_bytes=sum(e.size or 0 for e in snapshot_entries),
        table_files=len(entries), snapshot_files=len(snapshot_entries),
    )
    log.info("cost.measured table=%s location=%s version=%s live_bytes=%d history_bytes=%d snapshot_bytes=%d",
             table_name, location.name, version, usage.live_bytes, usage.history_bytes, usage.snapshot_bytes,
             extra={"table": table_name, "location": location.name})
    return usage


def measure_table(runtime, table) -> list[LocationUsage]:
    """Measure the source and every replica of one configured table, in configuration order."""
    replicator = runtime.replicators[table.name]
    found = []
    for loc in table.locations:
        store = replicator.source_store if loc is table.source else replicator.replicas[loc.name]
        snapshot_store, exclude = None, None
        snaps = table.snapshots
        if snaps is not None and snaps.replica == loc.name:
            snapshot_store = runtime.stores.folder(loc, snaps.path.strip("/"), label=f"{loc.name} snapshots",
                                                   container=snaps.container)
            inside = f"{loc.path.strip('/')}/"
            if snaps.container == loc.container and f"{snaps.path.strip('/')}/".startswith(inside):
                exclude = f"{snaps.path.strip('/')}/"[len(inside):]
        found.append(measure_location(table.name, loc, store, role="source" if loc is table.source else "replica",
                                      snapshot_store=snapshot_store, exclude_prefix=exclude))
    return found
