"""Promotion markers: how the app knows a table was promoted when its topology table is gone.

The ReplicationTopology table lives in the function app's storage. If that storage is
replaced (a new AzureWebJobsStorage, STATUS_CONNECTION pointed elsewhere) or the table is
deleted, "no row" would read as epoch 0 and make the configured source the primary again:
the real primary's events would be fenced and writers sent to a deposed (fenced) location.
Evidence that survives the host storage must live with the data, so every promote writes a
marker to every location that answers (the new primary always does), next to the quarantines:
`<container>/_quarantine/<table path>/topology/epoch-<E>.json`, holding that epoch's row and
every earlier one. A quarantine (`_quarantine/<table path>/epoch-<E>/`) is evidence too (tables
promoted before markers existed). Outside the table root, like the quarantine: no Delta reader
and no retention run ever lists it.

Only a missing *table* triggers the search (a table that exists without the table's row is a
table never promoted in this host storage); it costs one or two listings per location, and
once every location answered without evidence the empty table is created, so later reads are
one point read again.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

from shared.errors import ReplicationError
from shared.failover.rejoin import QUARANTINE_DIR
from shared.failover.topology import Topology

log = logging.getLogger(__name__)

MARKER_DIR = "topology"
_MARKER_RE = re.compile(r"(?:^|/)topology/epoch-(\d+)\.json$")
_QUARANTINE_RE = re.compile(r"/epoch-(\d+)(?:-rejoin-\d+)?/")


def marker_name(location, epoch: int) -> str:
    return f"{QUARANTINE_DIR}/{location.path}/{MARKER_DIR}/epoch-{epoch}.json"


@dataclass
class MarkerSearch:
    """The newest evidence of a promotion found (None: none), where, and the locations that did not answer."""

    marker: dict | None = None
    location: str | None = None
    unreachable: list[str] = field(default_factory=list)


class PromotionMarkers:
    """Markers of one runtime's tables in their data locations.

    Args:
        runtime: the ReplicationRuntime (its blob clients).
        stores: the stores to read and write through (default `runtime.stores`); readers pass
            their short-timeout ones.
    """

    def __init__(self, runtime, *, stores=None) -> None:
        self._runtime = runtime
        self._stores = stores

    def _quarantines(self, loc):
        """`_quarantine/<table path>/` of a location: the markers and every rejoin's quarantine."""
        stores = self._stores or self._runtime.stores
        return stores.folder(loc, f"{QUARANTINE_DIR}/{loc.path}", label=f"{loc.name}-quarantine")

    def write(self, table, history: list[Topology]) -> list[str]:
        """Write the newest epoch's marker (with the whole history) to every location that answers;
        returns the locations written. A failure is logged: the promote itself has happened."""
        current = history[-1]
        doc = {**current.as_json(), "history": [h.as_json() for h in history]}
        data = json.dumps(doc, indent=1).encode()
        written = []
        for loc in table.locations:
            try:
                self._quarantines(loc).put_file(f"{MARKER_DIR}/epoch-{current.epoch}.json", data, overwrite=False)
            except ReplicationError as err:  # that location is down: the others hold it
                log.warning("topology.marker_failed table=%s location=%s epoch=%d error=%s", table.name, loc.name,
                            current.epoch, type(err).__name__, extra={"table": table.name, "location": loc.name})
                continue
            written.append(loc.name)
        return written

    def latest(self, table, *, pool=None) -> MarkerSearch:
        """The newest marker (or quarantine) of the table in any of its locations; with `pool`, the
        locations are searched at once (a reader's wait is one location's, not their sum)."""
        found = MarkerSearch()
        searches = [pool.submit(self._evidence, self._quarantines(loc)) for loc in table.locations] if pool else None
        for i, loc in enumerate(table.locations):
            try:
                evidence = searches[i].result() if searches else self._evidence(self._quarantines(loc))
            except ReplicationError as err:  # cannot tell what it holds
                log.warning("topology.marker_unreadable table=%s location=%s error=%s", table.name, loc.name,
                            type(err).__name__, extra={"table": table.name, "location": loc.name})
                found.unreachable.append(loc.name)
                continue
            if evidence is not None and (found.marker is None or _better(evidence, found.marker)):
                found.marker, found.location = evidence, loc.name
        return found

    @staticmethod
    def _evidence(quarantines) -> dict | None:
        """The newest marker there; else any quarantine (a promotion happened, epoch from its
        folder); else None (also when the container does not exist: no table, no marker)."""
        markers = [(int(m.group(1)), f.name) for f in quarantines.list_files(MARKER_DIR + "/")
                   if (m := _MARKER_RE.search(f.name))]
        if markers:
            _, name = max(markers)
            return json.loads(quarantines.get_file(name))
        first = quarantines.first_file()
        if first is None:
            return None
        m = _QUARANTINE_RE.search("/" + first.name)
        return {"epoch": int(m.group(1)) if m else 1, "primary": "unknown (a quarantine, no marker)", "history": []}


def marker_history(table, marker: dict) -> list[Topology]:
    """The topology rows a marker holds (every epoch up to its own), oldest first."""
    return [Topology(table.name, h["primary"], int(h["epoch"]), h.get("promotedAtVersion"), h.get("promotedAt"),
                     h.get("previousPrimary")) for h in marker.get("history") or []]


def _better(evidence: dict, found: dict) -> bool:
    """A newer epoch; at the same epoch, a marker naming its primary over a bare quarantine."""
    if evidence["epoch"] != found["epoch"]:
        return evidence["epoch"] > found["epoch"]
    return bool(evidence.get("history")) and not found.get("history")


def restore_topology(runtime, table_name: str) -> Topology:
    """Rebuild a missing ReplicationTopology (current row and history rows) from the newest marker.

    Raises:
        ReplicationError: no marker with a history was found, or a location did not answer (it
            may hold a newer one); nothing was written.
        TopologyConflict: the table has a current row already; nothing was written.
    """
    table = runtime.table(table_name)
    found = PromotionMarkers(runtime).latest(table)
    if found.unreachable:
        raise ReplicationError(f"location(s) {', '.join(found.unreachable)} of table {table_name} did not answer and "
                               "may hold a newer promotion marker; restore when every location answers. Nothing "
                               "was changed.")
    if found.marker is None or not found.marker.get("history"):
        raise ReplicationError(f"no promotion marker with a history was found for table {table_name}; recreate the "
                               "ReplicationTopology rows by hand (see the README's runbook). Nothing was changed.")
    rows = marker_history(table, found.marker)
    restored = runtime.topology_store().restore(table, rows)
    log.warning("topology.restored table=%s primary=%s epoch=%d from=%s", table.name, restored.primary, restored.epoch,
                found.location, extra={"table": table.name, "epoch": restored.epoch})
    return restored
