"""Where a location left the primary's lineage, after any number of failovers.

The current primary's log is the concatenation of every epoch's lineage: versions up to the
first promotion's PromotedAtVersion were written on the first primary, the next ones on the
next, and so on. A location that stopped following (a deposed primary that kept taking
writes, a replica that received a deposed lineage's commit, a fence) holds the primary's
commits up to some version d-1 and something else from d on. Rejoin quarantines from d, under
the epoch of the last promotion at or before d-1: the epoch in which the location last shared
the primary's lineage ended there. Only a location that shares no commit with the primary is
another table.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.delta import compare
from shared.delta.log import LogFileKind, parse_log_name
from shared.errors import RejoinRefused
from shared.failover.topology import Topology


@dataclass(frozen=True)
class QuarantinePlan:
    """What rejoin removes from a location: `versions` (ascending), under `epoch`.

    `promoted_at_version` is that epoch's promotion version (the last version the location
    shares with the primary is at or after it); `entries` is the location's log listing.
    """

    versions: list[int]
    entries: list
    epoch: int
    promoted_at_version: int


def commits(entries) -> dict[int, object]:
    """Version -> listing entry of each commit in a log listing."""
    return {lf.version: e for e in entries if (lf := parse_log_name(e.name)) and lf.kind == LogFileKind.COMMIT}


def same_commit(old, primary, mine, theirs) -> bool:
    """Byte-identical commits (shared.delta.compare): the listings' size and MD5, else the bytes."""
    return compare.same_commit(mine, theirs, lambda: old.get_log_file(mine.name),
                               lambda: primary.get_log_file(theirs.name))


def divergence(old, primary, history: list[Topology], entries, primary_entries) -> tuple[int | None, bool]:
    """(d, shared): the first version of `old` that is not the primary's (None: a prefix of it),
    and whether any version before d was compared equal.

    A version `old` holds that the primary's log no longer lists (log cleanup) cannot be
    compared; it counts as shared at or below the first promotion version (such a version was
    written before anyone was deposed) and as different above it (it may be an outage write).
    """
    mine = commits(entries)
    theirs = commits(primary_entries)
    first_promotion = min((h.promoted_at_version for h in history if h.promoted_at_version is not None), default=-1)
    shared = False
    for v in sorted(mine):
        if v in theirs:
            if not same_commit(old, primary, mine[v], theirs[v]):
                return v, shared
            shared = True
        elif theirs and v < min(theirs) and v <= first_promotion:
            continue
        else:
            return v, shared
    return None, shared


def plan_quarantine(table, old, primary, history: list[Topology], location: str) -> QuarantinePlan:
    """The versions of `old` to quarantine, and the epoch they belong to.

    Args:
        history: every promotion of the table (TopologyStore.history), by epoch; not empty.

    Raises:
        RejoinRefused: `old` shares no commit with the primary (a different table).
    """
    entries = old.list_log()
    d, shared = divergence(old, primary, history, entries, primary.list_log())
    current = history[-1]
    if d is None:
        return QuarantinePlan([], entries, current.epoch, current.promoted_at_version)
    if not shared:
        raise RejoinRefused(
            f"location {location} of table {table.name} shares no commit with the primary {current.primary}: its "
            f"version {d} differs and no earlier version is the primary's, so it is a different table. Nothing was "
            "changed; inspect both and restore the location from a snapshot."
        )
    # The last promotion at or before d-1: with several, the latest epoch (it deposed what came after).
    before = [h for h in history if h.promoted_at_version is not None and h.promoted_at_version < d]
    boundary = max(before, key=lambda h: (h.promoted_at_version, h.epoch)) if before else None
    versions = [v for v in sorted(commits(entries)) if v >= d]
    if boundary is None:  # diverged before the first promotion: a replica someone wrote to at epoch 0
        return QuarantinePlan(versions, entries, 0, -1)
    return QuarantinePlan(versions, entries, boundary.epoch, boundary.promoted_at_version)
