"""Promote: make another location of a table its writable primary (planned or forced).

Planned (the primary answers): bring LOCATION to the primary's head, waiting at most
`timeout` seconds, then flip the topology at that head. Forced (the primary does not answer):
flip at LOCATION's current head. The flip is ETag-conditional (see topology.py): of two
concurrent promotes one wins.

After the flip the old primary is fenced for writers (fence.py) when it answers, then its head
is read again: the versions between the promotion version and the fence are what it holds
beyond the new primary (`oldPrimaryVersionsBeyondPromotion`), measured, or "unknown" when it
does not answer (a forced promote's old primary is fenced later: at rejoin, or by the lag
check through `fence_deposed`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from shared import failpoints
from shared.delta.head import find_latest_version, find_source_head
from shared.delta.log import LOG_DIR, commit_name, parse_commit, version_prefix
from shared.delta.source_log import SourceLog
from shared.errors import PromotionRefused, ReplicationError, ReplicaUnreachable
from shared.failover.fence import fence_location, is_fence
from shared.failover.markers import PromotionMarkers
from shared.failover.topology import Topology

log = logging.getLogger(__name__)

from shared.failpoints import PROMOTE_FLIPPING  # noqa: E402,F401 - named with the others


@dataclass(frozen=True)
class PromoteResult:
    """What a promote did. `old_primary_ahead` is an int, or "unknown" when it could not be reached."""

    topology: Topology
    forced: bool
    head: int | None
    old_primary_head: int | None
    old_primary_ahead: int | str
    waited_seconds: float
    fence_version: int | None = None  # where the old primary's fence sits; None: not fenced (yet)
    lifted_fence: int | None = None  # the new primary's own fence (it was deposed), removed first

    def as_json(self) -> dict:
        return {**self.topology.as_json(), "forced": self.forced, "oldPrimaryHead": self.old_primary_head,
                "oldPrimaryVersionsBeyondPromotion": self.old_primary_ahead, "fenceVersion": self.fence_version,
                "liftedFenceVersion": self.lifted_fence, "waitedSeconds": round(self.waited_seconds, 3)}


def _check_target(runtime, table_name: str, to: str) -> tuple[object, Topology]:
    try:
        table = runtime.table(table_name)
    except KeyError:
        raise PromotionRefused(f"table {table_name!r} is not configured (configured: "
                               f"{runtime.table_names()}); nothing was changed.") from None
    names = [loc.name for loc in table.locations]
    if to not in names:
        raise PromotionRefused(f"table {table_name} has no location {to!r} (locations: {', '.join(names)}); "
                               "nothing was changed.")
    topology = runtime.topology(table_name)
    if topology.primary == to:
        raise PromotionRefused(f"{to} is already the primary of table {table_name} (epoch {topology.epoch}); "
                               "nothing was changed.")
    return table, topology


def promote(runtime, table_name: str, to: str, *, force: bool = False, timeout: float = 300.0,
            progress: Callable[[int | None, int | None], None] | None = None) -> PromoteResult:
    """Make `to` the primary of `table_name`.

    Args:
        runtime: the ReplicationRuntime.
        table_name: a configured table.
        to: one of its locations (not the current primary).
        force: the primary does not answer: flip at `to`'s own head (unplanned failover).
        timeout: planned only: how long to wait for `to` to reach the primary's head.
        progress: called with (location head, primary head) while waiting.

    Returns:
        The new topology and what the old primary may still hold beyond it.

    Raises:
        PromotionRefused: bad table or location; planned and the primary does not answer
            (use force) or `to` did not catch up in time; `to` holds nothing.
        TopologyConflict: another promote changed the topology first.
    """
    if timeout < 0:
        raise ValueError(f"timeout is a number of seconds >= 0 (got {timeout})")
    table, topology = _check_target(runtime, table_name, to)
    replicator = runtime.replicator(table_name, topology)
    target = replicator.replicas[to]
    started = time.monotonic()
    old_head: int | None = None
    lifted = None
    if force:
        # A deposed primary promoted back (the only one left answering) carries its own fence on
        # top: as the primary it must take writes, so the fence goes first and the flip is at the
        # version below it (what it holds below the fence, outage commits included, is its lineage).
        lifted = lift_fence(target, location=to)
        head = find_latest_version(target)
        try:
            old_head = find_source_head(SourceLog(table, replicator.source_store, replicator.root))
            ahead: int | str = max(0, (-1 if old_head is None else old_head) - (-1 if head is None else head))
        except ReplicaUnreachable:
            old_head, ahead = None, "unknown"
    else:
        head, old_head = _wait_for_head(runtime, table_name, topology, replicator, to, timeout, progress)
        ahead = "unknown"  # measured after the flip and the fence
    if head is None:
        raise PromotionRefused(f"location {to} of table {table_name} holds no version of the table; it cannot "
                               "become the primary. Nothing was changed.")
    failpoints.hit(PROMOTE_FLIPPING, table=table_name, to=to)
    store = runtime.topology_store()
    flipped = store.flip(topology, to, head)
    # Evidence beside the data that survives the host storage (markers.py): before the fence,
    # so a location that holds a fence also holds the marker. The promote has happened: a
    # failure here is logged, never raised.
    try:
        PromotionMarkers(runtime).write(table, store.history(table))
    except ReplicationError as err:
        log.warning("promote.markers_failed table=%s epoch=%d error=%s", table_name, flipped.epoch, err,
                    extra={"table": table_name, "epoch": flipped.epoch})
    fence_version = None
    try:
        fence = fence_location(replicator.source_store, location=topology.primary, epoch=flipped.epoch, primary=to)
        if fence is not None:
            fence_version = fence.version
            # Re-read the head: a commit that landed after the head check (planned) or that the new
            # primary never got (forced) sits below the fence; nothing compliant commits above it.
            old_head = find_latest_version(replicator.source_store)
            ahead = max(0, fence.version - 1 - head)
    except ReplicationError as err:
        log.warning("promote.fence_failed table=%s location=%s error=%s", table_name, topology.primary, err,
                    extra={"table": table_name, "location": topology.primary})
        if not force:
            old_head, ahead = None, "unknown"
    log.warning("promote.done table=%s primary=%s previous=%s epoch=%d version=%d forced=%s old_primary_ahead=%s "
                "fence_version=%s", table_name, to, topology.primary, flipped.epoch, head, force, ahead, fence_version,
                extra={"table": table_name, "primary": to, "epoch": flipped.epoch})
    return PromoteResult(flipped, force, head, old_head, ahead, time.monotonic() - started, fence_version, lifted)


def lift_fence(store, *, location: str) -> int | None:
    """Remove the fence from the top of `store`'s log, if its head is one; returns its version.

    Only a forced promote calls this, right before its flip. Should the flip then lose to another
    promote, the location is a deposed primary without its fence until the next lag check fences
    it again (`fence_deposed`); nothing is lost either way (the fence holds no rows).
    """
    head = find_latest_version(store)
    if head is None:
        return None
    actions = parse_commit(store.get_log_file(commit_name(head)), where=f"{store.description} version {head}")
    if not is_fence(actions):
        return None
    store.delete_files([f"{LOG_DIR}/{commit_name(head)}"])
    log.warning("promote.fence_lifted location=%s version=%d", location, head,
                extra={"location": location, "version": head})
    return head


def _wait_for_head(runtime, table_name, topology, replicator, to, timeout, progress) -> tuple[int, int]:
    """Catch `to` up to the primary's head (re-read each round: writers should have stopped)."""
    table = replicator.table
    deadline = time.monotonic() + timeout
    target = replicator.replicas[to]
    while True:
        source = SourceLog(table, replicator.source_store, replicator.root)
        try:
            primary_head = find_source_head(source)
        except ReplicaUnreachable as err:
            raise PromotionRefused(
                f"the primary {topology.primary} of table {table_name} does not answer ({err}); a planned promote "
                f"needs it. If its region is down, run `python -m cli promote --table {table_name} --to {to} "
                "--force` (versions it holds beyond the new primary are quarantined at rejoin). Nothing was changed."
            ) from err
        head = find_latest_version(target)
        if progress is not None:
            progress(head, primary_head)
        if head is not None and head == primary_head:
            replicator.check_head_matches(to, target, source, head, head, target.list_log(version_prefix(head)))
            return head, primary_head
        if time.monotonic() >= deadline:
            raise PromotionRefused(
                f"location {to} of table {table_name} is at version {head}, the primary {topology.primary} at "
                f"{primary_head}, after waiting {timeout:.0f}s; stop the writers (or raise --timeout) and promote "
                "again. Nothing was changed."
            )
        try:
            outcomes = replicator.replicate(None)
        except ReplicationError as err:
            outcomes = []
            log.warning("promote.sync_failed table=%s location=%s error=%s", table_name, to, err)
        failed = [o for o in outcomes if o.replica == to and o.error is not None and not o.retryable]
        if failed:
            raise PromotionRefused(f"location {to} of table {table_name} cannot catch up: {failed[0].error} "
                                   "Nothing was changed.")
        time.sleep(0.2)
