"""The write-time fence: nothing of an ended epoch's lineage is written after the flip.

An invocation learns the topology once, at its start, and may then copy files for seconds. A
promote in between ends the epoch it replicates from. So right before each commit and each
`_last_checkpoint` write to a replica, the topology is read again (one point read of the
ReplicationTopology row) and the write goes ahead only if the row still names this replicator's
primary, at the invocation's epoch when it knows one.

Azure Storage cannot make a blob write conditional on another resource (the topology row lives in
another account), so a window remains: from the moment the table service answers that read to the
moment the write lands (measured in README, Guarantees). A commit that slips through it lands in a
replica above the promotion version: the next event from the new primary for that version finds a
different commit there (`diverged`), the lag check measures it diverged or ahead, and rejoins it
(automatically for a location that was never a primary; see shared/app/lag_check.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Callable

from shared import failpoints
from shared.errors import WriteFenced

log = logging.getLogger(__name__)


class WriteFence:
    """Checks, before a write, that the topology still names `primary` (at `epoch` when known).

    Args:
        read_topology: reads a table's topology now (one point read; never a cached answer).
        table: the table's name.
        primary: the location this replicator copies from.
    """

    def __init__(self, read_topology: Callable[[str], object], table: str, primary: str) -> None:
        self._read = read_topology
        self.table = table
        self.primary = primary
        self._lock = threading.Lock()
        self.reads = 0  # topology reads made by this fence (the cost of the check, per process)

    def check(self, epoch: int | None, *, replica: str, what: str) -> None:
        """Raise unless the topology read now names this primary (and `epoch`, when not None).

        Raises:
            WriteFenced: a promote ended the epoch; nothing may be written for it.
            ReplicaUnreachable / TopologyUnavailable: the topology cannot be read (retryable):
                writing without knowing could put an ended lineage into a replica.
        """
        with self._lock:
            self.reads += 1
        topology = self._read(self.table)
        if topology.primary != self.primary or (epoch is not None and topology.epoch != epoch):
            at = "" if epoch is None else f" at epoch {epoch}"
            log.warning("write.fenced table=%s replica=%s what=%s primary=%s epoch=%s current_primary=%s "
                        "current_epoch=%d", self.table, replica, what, self.primary, epoch, topology.primary,
                        topology.epoch, extra={"table": self.table, "replica": replica, "epoch": topology.epoch})
            then = ("it is the primary now" if replica == topology.primary
                    else f"events from {topology.primary} bring it up to date")
            raise WriteFenced(
                f"table {self.table}: {what} to {replica} was not written: it was replicated from "
                f"{self.primary}{at}, but the primary is now {topology.primary} (epoch {topology.epoch}); a "
                f"promote happened while this invocation ran. Nothing of the ended epoch is written; {then}.")
        failpoints.hit(failpoints.FENCE_CHECKED, replica=replica, what=what)


# How long a fresh topology read routes later events of its table without another read. In the steady
# state each commit's write fence refreshes it; the bound limits how long files of a location deposed
# meanwhile could be copied (never its commits: the fence refuses those).
ROUTING_TRUST_SECONDS = 30.0
# Tables remembered at most (a group may hold thousands): past it, the least recently read goes first.
REMEMBERED_TABLES = 4096


class RememberedTopologies:
    """The last fresh topology read of this process, per table (one small entry per table), for routing.

    Why routing by it is safe: routing decides only where to read from. Every write is still preceded
    by the write fence's fresh read, which refuses a stale epoch, and the event is then handled again
    from a fresh read (shared/app/commit_event.py). An answer that does *not* name the event's location
    is never trusted: after a promote to that location it would drop the new primary's events.
    """

    def __init__(self) -> None:
        self._known: OrderedDict[str, tuple[object, float]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, table: str, topology) -> None:
        """Remember a fresh read, unless one of a later epoch is remembered: a read that started
        before a promote and finished after a newer one must not bring the deposed primary back."""
        with self._lock:
            known, now = self._known.get(table), time.monotonic()
            if known is None or topology.epoch >= known[0].epoch or now - known[1] > ROUTING_TRUST_SECONDS:
                self._known[table] = (topology, now)
                self._known.move_to_end(table)
                if len(self._known) > REMEMBERED_TABLES:
                    self._known.popitem(last=False)

    def routing(self, table: str, location: str):
        """The remembered topology when it names `location` the primary and is at most
        ROUTING_TRUST_SECONDS old; else None (read it afresh)."""
        with self._lock:
            known = self._known.get(table)
        if known is not None and known[0].primary == location and \
                time.monotonic() - known[1] <= ROUTING_TRUST_SECONDS:
            return known[0]
        return None

    def forget(self, table: str) -> None:
        with self._lock:
            self._known.pop(table, None)
