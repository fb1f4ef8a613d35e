"""What this process knows of commits it read or wrote: size and MD5 per (topology epoch, version), for
a short while, so that the steady state's divergence checks need no request.

Two uses, one rule (an entry stands only at its epoch, for TRUST_SECONDS):
- the primary's commits this process read (`SourceLog`): within an epoch a primary's commit never
  changes (Delta writes each once; cleanup only deletes), and a promote starts a new epoch;
- per replica, the commits this process wrote there or found there identical (`TableReplicator`):
  within an epoch this tool removes a replica's commit only by retention (below a newer checkpoint:
  a late duplicate event may then re-create one there, harmless to readers, who start from the
  checkpoint) and by a consistent group promote's trim, which is why a group's tables do not use it;
  rejoin and a lifted fence act on another epoch's lineage.
The bound covers what happens outside this tool: a table or replica re-created at the same path.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict

from shared.delta.log import commit_name
from shared.storage.table_store import LogEntry

# How long a remembered digest stands in for a request. Bounded so that a table or replica dropped
# and re-created at the same path without a promote (same epoch) is asked again soon.
TRUST_SECONDS = 30.0


class CommitDigests:
    """Size and MD5 of commits, per (epoch, version), kept across invocations (see the module's
    docstring); at most `capacity`, the oldest out first; trusted for `trust_seconds`."""

    def __init__(self, capacity: int = 1024, *, trust_seconds: float = TRUST_SECONDS) -> None:
        self.capacity = capacity
        self.trust_seconds = trust_seconds
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, int], tuple[int, bytes, float]] = OrderedDict()

    @staticmethod
    def digest(data: bytes) -> tuple[int, bytes]:
        return len(data), hashlib.md5(data).digest()  # noqa: S324 - a content check, as Content-MD5

    def put(self, epoch: int, version: int, digest: tuple[int, bytes]) -> None:
        with self._lock:
            self._entries[(epoch, version)] = (*digest, time.monotonic())
            self._entries.move_to_end((epoch, version))
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def get(self, epoch: int, version: int) -> tuple[int, bytes] | None:
        """Size and MD5, if read at this epoch in the last `trust_seconds` (the next commit's
        event, in the steady state); older entries are asked again."""
        with self._lock:
            entry = self._entries.get((epoch, version))
        if entry is None or time.monotonic() - entry[2] > self.trust_seconds:
            return None
        return entry[0], entry[1]

    def entry(self, epoch: int | None, version: int) -> LogEntry | None:
        """The commit's log entry (name, size, MD5; no request made) if known at `epoch`, else None."""
        known = self.get(epoch, version) if epoch is not None and version >= 0 else None
        return None if known is None else LogEntry(commit_name(version), known[0], content_md5=known[1])
