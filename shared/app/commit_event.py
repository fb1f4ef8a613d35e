"""Handle one storage event: route it to a table and replicate that table's log.

This is the entry point `replicate_commit` calls.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.cost.transfer import record_replicated_bytes
from shared.delta.log import LogFileKind
from shared.errors import InvalidEvent, ReplicationError, WriteFenced
from shared.maintenance.retention import purge_after_vacuum
from shared.replication.events import parse_event, route_event
from shared.replication.outcome import ReplicaOutcome
from shared.runtime import ReplicationRuntime

log = logging.getLogger(__name__)


class EventDisposition(enum.Enum):
    REJECTED = "rejected"  # not ours or unsafe: acknowledged, nothing written
    IGNORED = "ignored"  # a configured table's non-log blob (data, temporary files)
    FENCED = "fenced"  # a log file of a location that is not the table's primary: nothing copied
    HANDLED = "handled"


@dataclass
class EventResult:
    disposition: EventDisposition
    table: str | None = None
    log_file: str | None = None
    version: int | None = None
    reason: str | None = None
    outcomes: list[ReplicaOutcome] = field(default_factory=list)

    @property
    def retryable_failures(self) -> list[ReplicaOutcome]:
        return [o for o in self.outcomes if o.retryable]


def handle_storage_event(runtime: ReplicationRuntime, envelope: Mapping[str, Any], *,
                         remembered: bool = True) -> EventResult:
    """Replicate what one BlobCreated/BlobRenamed event names.

    An event for version N means "bring every replica up to at least N". Duplicate,
    reordered and lost events converge because each replica's position is read from the
    replica itself.

    Args:
        remembered: route with this process's last fresh topology read when it names the event's
            location (runtime.remembered_topology); False reads it afresh.

    Returns:
        The disposition and, when handled, one outcome per replica; never raises for a
        replica's failure (the caller decides whether to ask for redelivery).
    """
    try:
        event = parse_event(envelope)
        ref = route_event(event, runtime.config, runtime.source_accounts)
    except InvalidEvent as err:
        # WARNING: a rejected event means a misconfigured subscription or someone probing.
        log.warning("event.rejected reason=%s", err, extra={"reason": str(err)})
        return EventResult(EventDisposition.REJECTED, reason=str(err))
    if ref is None:
        log.debug("event.ignored account=%s container=%s path=%s", event.account, event.container, event.path)
        return EventResult(EventDisposition.IGNORED, reason="not a replicable _delta_log file")
    if ref.log_file.kind == LogFileKind.SIDECAR:
        # Sidecars are copied with the checkpoint that references them.
        return EventResult(EventDisposition.IGNORED, table=ref.table.name, log_file=ref.log_file.name,
                           reason="sidecars are copied with their checkpoint")
    if ref.relative is not None:
        claimed = runtime.groups.claim(ref.table, ref.relative)
        if claimed is None:
            reason = (f"folder {ref.relative!r} of group {ref.table.group} has the name {ref.table.name} another "
                      "folder of the group holds; exclude one of them (the group's exclude globs)")
            log.warning("event.rejected reason=%s", reason, extra={"reason": reason})
            return EventResult(EventDisposition.REJECTED, table=ref.table.name, reason=reason)
        runtime.groups.mark_idle(ref.table.name, None)  # the lag check measures it fully next time
        if claimed:  # a group's table not seen before: this event starts it (readable-first)
            log.info("group.table_found group=%s table=%s", ref.table.group, ref.table.name,
                     extra={"group": ref.table.group, "table": ref.table.name})
    started = time.monotonic()
    # The commit is read from where the event says while the topology is read: a read of a
    # location that turns out not to be the primary is discarded, and nothing is written
    # before the topology is known.
    known = runtime.remembered_topology(ref.table.name, ref.location) if remembered else None
    reading = runtime.topology_async(ref.table.name) if known is None else None
    replicator = runtime.replicator_from(ref.table.name, ref.location)
    source = replicator.source_log()
    if ref.log_file.kind == LogFileKind.COMMIT:
        try:
            source.commit(ref.version)
        except Exception:  # noqa: BLE001 - replicate() reads it again and reports the error
            pass
    topology = known if reading is None else reading.result()
    if ref.location != topology.primary:
        # After a promote the old primary (or a replica's own write) must never feed the others.
        log.warning("event.fenced table=%s location=%s primary=%s epoch=%d file=%s", ref.table.name, ref.location,
                    topology.primary, topology.epoch, ref.log_file.name,
                    extra={"table": ref.table.name, "location": ref.location, "epoch": topology.epoch})
        return EventResult(EventDisposition.FENCED, table=ref.table.name, log_file=ref.log_file.name,
                           version=ref.version,
                           reason=f"location {ref.location} is not the primary ({topology.primary}) at epoch "
                                  f"{topology.epoch}")
    outcomes = replicator.replicate(ref.version, log_file_kind=ref.log_file.kind,
                                    source=source.at_epoch(topology.epoch))
    if known is not None and any(isinstance(o.error, WriteFenced) for o in outcomes):
        # The remembered topology was stale (a promote since): its writes were refused. When the
        # location is the primary again at a later epoch, the event is handled again from that fresh
        # read; otherwise the refusals stand, as for an invocation that raced the promote.
        runtime.forget_topology(ref.table.name)
        if _primary_now(runtime, ref.table.name) == ref.location:
            log.info("event.rerouted table=%s file=%s stale_epoch=%d", ref.table.name, ref.log_file.name,
                     topology.epoch, extra={"table": ref.table.name, "log_file": ref.log_file.name})
            record_replicated_bytes(runtime, ref.table.name, outcomes)
            return handle_storage_event(runtime, envelope, remembered=False)
    record_replicated_bytes(runtime, ref.table.name, outcomes)
    if any(o.vacuum_versions for o in outcomes):
        # A VACUUM on the primary: purge the same files from those replicas now, not at the daily timer.
        purge_after_vacuum(replicator, outcomes, status=_status_or_none(runtime))
    result = EventResult(EventDisposition.HANDLED, table=ref.table.name, log_file=ref.log_file.name,
                         version=ref.version, outcomes=outcomes)
    states = ",".join(f"{o.replica}:{o.state.value}" for o in outcomes)
    log.info("event.handled table=%s file=%s replicas=%s seconds=%.3f", ref.table.name, ref.log_file.name,
             states, time.monotonic() - started,
             extra={"table": ref.table.name, "log_file": ref.log_file.name, "version": ref.version})
    return result


def _status_or_none(runtime: ReplicationRuntime):
    """The status store when the function app's storage is configured; purges are recorded there."""
    try:
        return runtime.status_store()
    except ReplicationError:
        return None


def _primary_now(runtime: ReplicationRuntime, table: str) -> str | None:
    """The primary read now; None when it cannot be read (the refusals stand: nothing of the event was
    written, and the lag check brings the replicas up from whichever location is the primary)."""
    try:
        return runtime.topology(table).primary
    except ReplicationError:
        return None
