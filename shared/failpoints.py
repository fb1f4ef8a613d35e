"""Named points in the replication sequence where fault-injection tests can act.

Disarmed (the default) a failpoint costs one dictionary lookup. Tests arm one to kill the
process or raise at an exact step boundary, to prove a crash there leaves no torn replica.
"""

from __future__ import annotations

import threading
from typing import Callable

FILE_COPIED = "file.copied"  # after one data/log file reached a replica
FILE_COPYING = "file.copying"  # a catch-up's copy of one data file is about to start (in its pool thread)
COMMIT_BEFORE = "commit.before"  # a commit's files are all there; the commit is not yet written
FENCE_CHECKED = "fence.checked"  # the topology was read before a write and still names this primary; not yet written
COMMIT_AFTER = "commit.after"  # a commit was written; its crc/checkpoint not yet
CHECKPOINT_COPIED = "checkpoint.copied"  # checkpoint parts copied; _last_checkpoint not yet
SEED_FILE = "seed.file"  # one file of a checkpoint seed copied
SNAPSHOT_FILE = "snapshot.file"  # one file of a snapshot copied
CHECKPOINT_COPYING = "checkpoint.copying"  # a checkpoint's parts are about to be copied to a replica
CONSOLIDATION_READ = "consolidation.read"  # a batch of source rows read; the merge not started
CONSOLIDATION_MERGE = "consolidation.merge"  # the merge of a batch starts (files, then the commit)
CONSOLIDATION_MERGED = "consolidation.merged"  # the MERGE of a batch returned; nothing else committed yet
CONSOLIDATION_COMMITTED = "consolidation.committed"  # the merge committed; the status row not yet written
REJOIN_COPIED = "rejoin.copied"  # quarantine copies verified and the manifest written; nothing removed yet
REJOIN_VERIFYING = "rejoin.verifying"  # quarantine copies written, not yet compared with the originals
REJOIN_REMOVED = "rejoin.removed"  # one quarantined log file removed from the location
REJOIN_CATCH_UP = "rejoin.catch_up"  # the location trimmed; its catch-up from the primary not started
PROMOTE_FLIPPING = "promote.flipping"  # the head is settled, the topology not yet changed
LEASE_RENEW = "lease.renew"  # a renewal is about to be sent (tests make it fail)
RETENTION_DELETING = "retention.deleting"  # what to delete is decided, nothing deleted yet

_lock = threading.Lock()
_armed: dict[str, list] = {}


def arm(name: str, *, after: int, action: Callable[[], None], where: dict | None = None) -> None:
    """Run `action` the `after`-th time `name` is hit (1 = the first time).

    Args:
        where: only hits whose context has these values count (e.g. {"replica": "seasia"}).
    """
    if after < 1:
        raise ValueError("after counts hits from 1")
    with _lock:
        _armed[name] = [after, action, where or {}]


def arm_each(name: str, action: Callable[[], None], *, where: dict | None = None) -> None:
    """Run `action` every time `name` is hit (e.g. a barrier making two threads meet there)."""
    with _lock:
        _armed[name] = [None, action, where or {}]


def disarm_all() -> None:
    with _lock:
        _armed.clear()


def hit(name: str, **context) -> None:
    """Mark that the sequence passed `name`; `context` says where (replica, path)."""
    if not _armed:
        return
    with _lock:
        entry = _armed.get(name)
        if entry is None or any(context.get(k) != v for k, v in entry[2].items()):
            return
        if entry[0] is None:
            fire = True
        else:
            entry[0] -= 1
            fire = entry[0] == 0
    if fire:
        entry[1]()
