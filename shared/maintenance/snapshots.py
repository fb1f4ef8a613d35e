"""Point-in-time snapshots of a replica as self-contained Delta tables, with keep_last retention.

A snapshot lives at `<snapshots.path>/<UTC yyyymmddTHHMMSSZ>/` in the replica's account:
the data and deletion-vector files active at the replica's version, copied, and a fresh
log whose version 0 holds protocol, metaData and those add actions. It is complete only
once that commit exists (written last); anything else under the folder is an interrupted
snapshot, never counted, and removed by the next run.

A replica whose log is not a byte-identical prefix of the primary's (prefix.py: diverged,
ahead, fenced) is not snapshotted and its snapshots are not rotated: a snapshot of another
lineage would push the last good ones out of keep_last.
"""

from __future__ import annotations

import logging
import re
import time
from concurrent.futures import wait
from dataclasses import dataclass, field
from datetime import datetime, timezone

from shared import failpoints
from shared.delta.head import find_latest_version
from shared.delta.log import (
    ReferencedFile,
    commit_name,
    referenced_files,
)
from shared.delta.paths import store_root
from shared.delta.table_state import state_commit, table_state
from shared.maintenance.prefix import not_a_prefix

log = logging.getLogger(__name__)

_STAMP_RE = re.compile(r"^\d{8}T\d{6}Z$")


@dataclass
class SnapshotResult:
    table: str
    replica: str
    created: str | None = None
    version: int | None = None
    files: int = 0
    kept: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    removed_incomplete: list[str] = field(default_factory=list)
    skipped: str | None = None  # why no snapshot was taken and none rotated


def snapshot_files(state, root) -> list[ReferencedFile]:
    """The data and deletion-vector files a snapshot copies (external files are read where they are)."""
    actions = [{"add": add} for add in state.adds.values()]
    return referenced_files(actions, root, allow_external=True, where=f"snapshot at version {state.version}")


def maintain_table_snapshots(runtime, table, *, now: datetime | None = None) -> SnapshotResult:
    """Remove interrupted snapshots, take one at the replica's current version, keep the newest keep_last."""
    config = table.snapshots
    replicator = runtime.replicator(table.name)  # follows the topology
    replica_loc = table.location(config.replica)
    # After a failover the snapshot location may be the primary itself: snapshot it there.
    replica_store = replicator.replicas.get(config.replica) or runtime.stores.table(replica_loc)
    root = runtime.stores.folder(replica_loc, config.path, label=f"snapshots of {table.name}",
                                 container=config.container)
    result = SnapshotResult(table.name, config.replica)
    if config.replica in replicator.replicas:
        diverged = not_a_prefix(replica_store, replicator.source_store, replica_store.list_log(""),
                                replicator.source_store.list_log(""))
        if diverged is not None:
            result.skipped = (f"{diverged}; no snapshot is taken or rotated until `python -m cli rejoin --table "
                              f"{table.name} --location {config.replica}` has quarantined what only it holds")
            log.warning("snapshot.skipped table=%s replica=%s reason=%s", table.name, config.replica, result.skipped,
                        extra={"table": table.name, "replica": config.replica})
            return result
    complete, incomplete = [], []
    for folder in root.list_subfolders():
        if not _STAMP_RE.match(folder):
            continue
        (complete if root.child(folder).file_size(f"_delta_log/{commit_name(0)}") is not None else incomplete).append(folder)
    for folder in incomplete:
        _delete_folder(root, folder)
        result.removed_incomplete.append(folder)
        log.info("snapshot.removed_incomplete table=%s folder=%s", table.name, folder)

    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    head = find_latest_version(replica_store)
    if head is not None and stamp not in complete:
        started = time.monotonic()
        state = table_state(replica_store, head)
        target = root.child(stamp)
        files = snapshot_files(state, store_root(replica_store))
        def copy(f: ReferencedFile) -> None:
            target.copy_file_from(replica_store, f.path, expected_size=f.size)
            failpoints.hit(failpoints.SNAPSHOT_FILE)

        # The runtime's maintenance pool: bounded, and never in the way of replication's copies.
        futures = [runtime.executors.maintenance.submit(copy, f) for f in files]
        wait(futures)  # every copy settled before the first error is raised: none outlives the run
        for future in futures:
            future.result()
        commit = state_commit(state, timestamp_ms=int(time.time() * 1000), operation="SNAPSHOT",
                              parameters={"table": table.name, "replica": config.replica, "version": str(head)})
        target.create_log_file(commit_name(0), commit)
        complete.append(stamp)
        result.created, result.version, result.files = stamp, head, len(files)
        log.info("snapshot.created table=%s replica=%s folder=%s version=%d files=%d seconds=%.2f", table.name,
                 config.replica, stamp, head, len(files), time.monotonic() - started,
                 extra={"table": table.name, "replica": config.replica, "version": head})
    complete.sort()
    keep = complete[-config.keep_last:]
    for folder in complete[:-config.keep_last]:
        _delete_folder(root, folder)
        result.deleted.append(folder)
        log.info("snapshot.deleted table=%s folder=%s", table.name, folder)
    result.kept = keep
    return result


def _delete_folder(root, folder: str) -> None:
    store = root.child(folder)
    # The commit goes first, so a half-deleted snapshot is already "incomplete", never a torn table.
    store.delete_files([f"_delta_log/{commit_name(0)}"])
    store.delete_files([f.name for f in store.list_files()])
