"""The topology as readers see it: read with a short timeout, and the last answer kept in-process.

Readers must not hang or fail because the function app's own table storage does not answer while
every data location does. So the resolver reads the ReplicationTopology row through a client with
short timeouts (connect 2 s, read 3 s, one retry of a refused connection only), remembers the last
answer this process read, and when a read fails answers from that, flagged stale with the reason.
A stale answer is checked against the evidence a promote leaves beside the data (markers.py): a
promotion marker newer than the remembered epoch replaces it (the marker holds that epoch's row
and the whole history), and a quarantine without a marker means a promotion this process cannot
name, so nothing is named (503). The resolver also refuses a stale primary whose head is a fence.
That costs one listing per location per stale resolution, paid only while the host storage is
down. When this process never read the topology there is nothing safe to answer from: a promotion may
have happened, so neither a write endpoint nor a read location is taken from configuration alone;
`TopologyUnavailable` says why (HTTP 503).

This is the one place the topology outlives a call: the replicator and its write fence never use it.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone

from azure.core.exceptions import AzureError

from shared.config.model import TableConfig
from shared.errors import ConfigError, ReplicationError, TopologyUnavailable
from shared.failover.markers import PromotionMarkers, marker_history
from shared.failover.topology import Topology, TopologyStore, default_topology
from shared.reads.probe import probe_stores

TOPOLOGY_CONNECT_TIMEOUT_SECONDS = 2
TOPOLOGY_READ_TIMEOUT_SECONDS = 3
# A refused connection is retried once (a restarting endpoint); a read that timed out is not.
_RETRY = {"retry_total": 1, "retry_connect": 1, "retry_read": 0, "retry_status": 1, "retry_backoff_factor": 0.2}
# The worst case before a reader gets an answer about the topology: one read timeout plus a
# connect timeout (an endpoint that accepts and never answers, or one that never accepts).
TOPOLOGY_BOUND_SECONDS = TOPOLOGY_READ_TIMEOUT_SECONDS + TOPOLOGY_CONNECT_TIMEOUT_SECONDS


@dataclass(frozen=True)
class KnownTopology:
    """The topology a read is resolved with: read now, or the last one this process read (stale)."""

    topology: Topology
    read_at: datetime | None  # None: no host storage configured (the configuration is the topology)
    stale_reason: str | None = None
    # Every promotion, by epoch (empty when never promoted): which locations were deposed, and where.
    history: tuple[Topology, ...] = ()
    rejoins: dict = field(default_factory=dict)  # location -> epoch of its last rejoin

    @property
    def stale(self) -> bool:
        return self.stale_reason is not None


class ReaderTopology:
    """Short-timeout topology reads for the resolver, with the last answer per table kept.

    Args:
        runtime: the ReplicationRuntime (its function app storage settings).
    """

    def __init__(self, runtime) -> None:
        self._runtime = runtime
        self._lock = threading.Lock()
        self._store: TopologyStore | None = None
        self._service = None
        self._last: dict[str, KnownTopology] = {}

    def service(self):
        """The short-timeout TableServiceClient (also for the status rows readers need)."""
        with self._lock:
            if self._service is None:
                self._service = self._runtime.table_service_with(
                    connection_timeout=TOPOLOGY_CONNECT_TIMEOUT_SECONDS, read_timeout=TOPOLOGY_READ_TIMEOUT_SECONDS,
                    **_RETRY)
                self._store = TopologyStore(self._service)
            return self._service

    def get(self, table: TableConfig) -> KnownTopology:
        """The table's topology now, else the last one read here (stale, with the reason).

        Raises:
            TopologyUnavailable: the topology cannot be read and this process never read it.
        """
        try:
            self.service()
        except ConfigError:
            return KnownTopology(default_topology(table), None)  # no host storage: no promote can exist
        try:
            topology, history, rejoins = self._store.read_all(table)
        except (ReplicationError, AzureError) as err:
            reason = (f"the ReplicationTopology table in the function app's storage did not answer "
                      f"({type(err).__name__})")
            with self._lock:
                last = self._last.get(table.name)
            if last is None:
                raise TopologyUnavailable(
                    f"table {table.name}: {reason}, and this process has not read it before; which location "
                    "is the primary is unknown (a promotion may have happened), so no location is named. "
                    "Retry later; check the function app's storage (STATUS_CONNECTION / AzureWebJobsStorage)."
                ) from err
            return self._checked_against_markers(table, last, reason)
        known = KnownTopology(topology, datetime.now(timezone.utc), history=tuple(history), rejoins=rejoins)
        with self._lock:
            self._last[table.name] = known
        return known

    def _checked_against_markers(self, table: TableConfig, last: KnownTopology, reason: str) -> KnownTopology:
        """The remembered topology, unless a promotion marker in a data location is newer.

        A promote this process never saw (its host storage went down right after) would otherwise
        name the deposed primary and serve the ended lineage's versions. Every promote writes its
        marker to the new primary before fencing the old one, and to every other location that
        answers, so the evidence is where the reads go.
        """
        found = PromotionMarkers(self._runtime, stores=probe_stores(self._runtime)).latest(
            table, pool=self._runtime.executors.topology)
        epoch = last.topology.epoch
        if found.marker is None or int(found.marker["epoch"]) <= epoch:
            return KnownTopology(last.topology, last.read_at, f"{reason}; the topology last read at "
                                 f"{last.read_at.isoformat()} is used", last.history, last.rejoins)
        newer = int(found.marker["epoch"])
        history = marker_history(table, found.marker)
        names = {loc.name for loc in table.locations}
        if not history or history[-1].epoch != newer or history[-1].primary not in names:
            raise TopologyUnavailable(
                f"table {table.name}: {reason}; the last topology this process read is epoch {epoch}, but "
                f"{found.location} holds evidence of a promotion to epoch {newer} that does not name its primary "
                "(a quarantine without a marker), so no location is named. Retry when the function app's storage "
                "answers, or restore its topology with `python -m cli topology restore`.")
        return KnownTopology(history[-1], last.read_at,
                             f"{reason}; the topology last read here (epoch {epoch}) is older than the promotion "
                             f"marker for epoch {newer} found in {found.location}, which is used",
                             tuple(history), last.rejoins)


_readers: "weakref.WeakKeyDictionary[object, ReaderTopology]" = weakref.WeakKeyDictionary()
_readers_lock = threading.Lock()


def reader_topology(runtime) -> ReaderTopology:
    """The runtime's ReaderTopology (one per runtime: its client and the last answers)."""
    with _readers_lock:
        reader = _readers.get(runtime)
        if reader is None:
            reader = _readers[runtime] = ReaderTopology(runtime)
        return reader
