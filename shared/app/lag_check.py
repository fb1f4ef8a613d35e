"""The lag check: heal lagging replicas, measure every replica, record status rows, alert on transitions."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from shared.cost.transfer import record_replicated_bytes
from shared.delta.log import commit_name
from shared.errors import ReplicationError
from shared.failover.topology import default_topology
from shared.groups.catalog import IdleMark
from shared.failover.fence import fence_deposed
from shared.telemetry import metrics
from shared.health.alerts import (
    GROUP_RPO_EXCEEDED,
    RECOVERED,
    AlertPublisher,
    alert_state,
    settle_alert,
    transition_event,
)
from shared.health.lag import ReplicaHealth, ReplicaLag, measure_table
from shared.health.recovery_point import ALERT_RPO, group_points, iso_ms
from shared.health.status import ALERT_OK, StatusStore
from shared.maintenance.retention import purge_after_vacuum

log = logging.getLogger(__name__)

# A group table found idle is measured fully again at least this often (a backstop for what one HEAD
# of the primary's next version cannot see, such as a replica's files removed by hand).
FULL_CHECK_SECONDS = 3600


def check_replication(runtime, status: StatusStore, alerts: AlertPublisher | None, *, heal: bool = True,
                      now: datetime | None = None) -> list[ReplicaLag]:
    """Check (and by default heal) every configured table's replicas.

    Healing runs the same catch-up as `replicate_commit`, under the same per-replica lease,
    so a concurrent event never causes duplicate copies. Alerts fire only when a replica's
    alert state changes (ok, lag_exceeded, diverged); if publishing fails the old state is
    kept, so the alert is tried again on the next run.

    Returns:
        The measurements, one per replica.
    """
    measured: list[ReplicaLag] = []
    # The discovery sweep: tables of a group whose events were lost are found here (and healed below).
    sweeps = {g.name: runtime.groups.sweep(g.name) for g in runtime.config.groups}
    group_lags: dict[str, list[ReplicaLag]] = {g.name: [] for g in runtime.config.groups}
    group_previous: dict[tuple[str, str], object] = {}
    group_topologies = {g.name: runtime.topology_store().current_of_group(g.name) for g in runtime.config.groups}
    tables = runtime.tables()
    topologies = {t.name: _topology(runtime, t, group_topologies) for t in tables}
    idle = _idle_tables(runtime, [t for t in tables if t.group], topologies, sweeps, status, now)
    for table in tables:
        if table.name in idle:  # O(1) requests: nothing happened to it since its last full check
            measured += idle[table.name]
            group_lags[table.group] += idle[table.name]
            continue
        topology = topologies[table.name]
        replicator = runtime.replicator(table.name, topology)
        previous = {row.replica: row for row in status.list_rows(table=table.name)}
        if _dropped(table, topology, sweeps):
            measured += _record_dropped(replicator, topology, status, previous, now)
            continue
        if table.group:
            group_previous.update({(table.name, replica): row for replica, row in previous.items()})
        if heal and topology.epoch > 0:
            # A forced promote's old primary is fenced as soon as it answers (writers refuse it),
            # before anything else meets it.
            try:
                fence_deposed(runtime, table.name, topology)
            except ReplicationError as err:  # the host table did not answer: the next run fences
                log.warning("fence.failed table=%s error=%s", table.name, err, extra={"table": table.name})
            _auto_rejoin(runtime, table, replicator, topology)
        # At the topology's epoch: the write fence then also refuses a promote in between.
        outcomes = replicator.replicate(None, source=replicator.source_log().at_epoch(topology.epoch)) if heal else []
        record_replicated_bytes(runtime, table.name, outcomes)
        if any(o.vacuum_versions for o in outcomes):
            purge_after_vacuum(replicator, outcomes, status=status)  # a VACUUM whose event was lost
        lags = measure_table(replicator, outcomes=outcomes, now=now,
                             previous_versions={k: v.replica_version for k, v in previous.items()})
        settled = []
        for lag in lags:
            before = previous[lag.replica].alert_state if lag.replica in previous else ALERT_OK
            state = alert_state(lag, table.lag_threshold_seconds)
            event_type = transition_event(before, state)
            if event_type is not None and alerts is not None:
                state = settle_alert(before, state,
                                     lambda: alerts.publish(event_type, lag, table.lag_threshold_seconds),
                                     describe=f"type={event_type} table={lag.table} replica={lag.replica}")
            status.put_row(lag, alert_state=state, previous=previous.get(lag.replica))
            settled.append(state)
            metrics.record_lag(lag)
            level = logging.INFO if lag.status.value in ("healthy", "lagging") else logging.WARNING
            log.log(level, "lag.checked table=%s replica=%s status=%s source_version=%s replica_version=%s "
                    "version_lag=%d lag_seconds=%.1f", lag.table, lag.replica, lag.status.value,
                    lag.source_version, lag.replica_version, lag.version_lag, lag.lag_seconds,
                    extra={"table": lag.table, "replica": lag.replica, "status": lag.status.value,
                           "version_lag": lag.version_lag, "lag_seconds": lag.lag_seconds})
            measured.append(lag)
            if table.group:
                group_lags[table.group].append(lag)
        if table.group:
            _mark(runtime, table, topology, lags, heal and all(state == ALERT_OK for state in settled))
    for group in runtime.config.groups:
        record_group_points(runtime, group, group_points(group, group_lags[group.name], group_previous,
                                                         now or datetime.now(timezone.utc)), alerts)
    runtime.flush_transfers()  # a timer's run: the cost report gets its bytes now, not at the next flush
    return measured


def record_group_points(runtime, group, points, alerts: AlertPublisher | None) -> None:
    """Store each location's group recovery point; alert once per crossing of rpo_threshold_seconds."""
    store = runtime.group_status()
    before = {point.replica: state for point, state in store.rows(group.name)}
    for point in points:
        previous = before.get(point.replica, ALERT_OK)
        state = ALERT_RPO if point.exceeds(group.rpo_threshold_seconds) else ALERT_OK
        if state != previous and alerts is not None:
            event_type = GROUP_RPO_EXCEEDED if state == ALERT_RPO else RECOVERED
            data = {**point.as_json(), "rpoThresholdSeconds": group.rpo_threshold_seconds}
            state = settle_alert(previous, state, lambda: alerts.publish_event(
                event_type, f"groups/{group.name}/replicas/{point.replica}", data),
                describe=f"type={event_type} group={group.name} replica={point.replica}")
        store.put(point, alert_state=state)
        metrics.record_group_point(point)
        log.info("group.recovery_point group=%s replica=%s recovery_point=%s age_seconds=%s tables=%d behind=%d",
                 group.name, point.replica, iso_ms(point.recovery_point), point.age_seconds, point.tables,
                 point.tables_behind, extra={"group": group.name, "replica": point.replica})


def _topology(runtime, table, group_topologies):
    """A group table's topology from its group's one range query (no row: epoch 0); else a point read."""
    rows = group_topologies.get(table.group) if table.group else None
    if rows is None:
        return runtime.topology(table.name)
    return rows.get(table.name) or default_topology(table)


def _idle_tables(runtime, tables, topologies, sweeps, status, now) -> dict[str, list[ReplicaLag]]:
    """The group tables still idle, each recorded healthy (their HEADs and status rows on the maintenance
    pool at once: an idle lag check over a thousand tables is bounded by requests in flight, not their sum)."""
    now = now or datetime.now(timezone.utc)  # one instant for the run's idle tables

    def one(table):
        if runtime.groups.idle(table.name) is None:
            return None
        topology = topologies[table.name]
        replicator = runtime.replicator(table.name, topology)
        mark = _still_idle(runtime, table, topology, replicator, sweeps)
        return None if mark is None else _record_idle(replicator, status, now, mark.version)

    found = runtime.executors.maintenance.map(one, tables)
    return {t.name: lags for t, lags in zip(tables, found) if lags is not None}


def _still_idle(runtime, table, topology, replicator, sweeps) -> IdleMark | None:
    """Its mark when it was idle at its last full check, under this topology, not too long ago, is still
    found by the sweep, and the primary has no commit after the one it was idle at (one HEAD request)."""
    mark = runtime.groups.idle(table.name)
    if mark is None or (mark.primary, mark.epoch) != (topology.primary, topology.epoch):
        return None
    if time.monotonic() - mark.marked_at > FULL_CHECK_SECONDS or _dropped(table, topology, sweeps):
        return None
    try:
        if replicator.source_store.log_entry(commit_name(mark.version + 1)) is not None:
            return None
    except ReplicationError:
        return None  # the full check reports what is wrong
    return mark


def _record_idle(replicator, status, now, version: int) -> list[ReplicaLag]:
    """Every replica healthy at the version it was marked idle at: its status row (CheckedAt and CaughtUpAt
    now, what readers bound staleness with) and metrics; no alert can change (it was ok when marked)."""
    mark_now = now or datetime.now(timezone.utc)
    lags = [ReplicaLag(replicator.table.name, name, version, version, 0, 0.0, ReplicaHealth.HEALTHY, mark_now)
            for name in replicator.replicas]
    status.put_healthy(lags)  # one upsert per replica row (cheaper in CPU than their transaction)
    for lag in lags:
        metrics.record_lag(lag)
    return lags


def _mark(runtime, table, topology, lags, eligible: bool) -> None:
    """After a full check: idle when it healed, every alert state is ok (none waits to be sent again) and
    every replica is healthy at the primary's head."""
    heads = {lag.source_version for lag in lags}
    idle = eligible and bool(lags) and all(lag.status == ReplicaHealth.HEALTHY and lag.version_lag == 0
                                       for lag in lags) and len(heads) == 1 and None not in heads
    runtime.groups.mark_idle(table.name, IdleMark(heads.pop(), topology.primary, topology.epoch, time.monotonic())
                             if idle else None)


def _dropped(table, topology, sweeps) -> bool:
    """A group's table the sweep did not find at its current primary (a sweep of a replica, taken
    while the primary did not answer, proves nothing: the replica may not have it yet)."""
    sweep = sweeps.get(table.group) if table.group else None
    return sweep is not None and sweep.location == topology.primary and table.name not in sweep.names


def _record_dropped(replicator, topology, status, previous, now) -> list[ReplicaLag]:
    """Status `dropped` for every replica of a table gone from its primary: nothing is healed or
    deleted (retention decides about the replicas' files), and no lag alert fires for it."""
    now = now or datetime.now(timezone.utc)
    lags = []
    for name in replicator.replicas:
        before = previous.get(name)
        lag = ReplicaLag(replicator.table.name, name, None, before.replica_version if before else None, 0, 0.0,
                         ReplicaHealth.DROPPED, now,
                         f"the table's _delta_log is gone from its primary {topology.primary}; the replica is kept")
        status.put_row(lag, alert_state=before.alert_state if before else ALERT_OK, previous=before)
        log.warning("lag.checked table=%s replica=%s status=dropped", lag.table, name,
                    extra={"table": lag.table, "replica": name, "status": "dropped"})
        lags.append(lag)
    return lags


def ever_primary(table, topology) -> set[str]:
    """Locations that may have taken writes: the configured source, the current primary and the
    primary it replaced. (A primary of an earlier epoch that is none of these is missed; rejoin
    only quarantines, so its writes are kept either way.)"""
    return {n for n in (table.source.name, topology.primary, topology.previous_primary) if n}


def _auto_rejoin(runtime, table, replicator, topology) -> None:
    """Rejoin reachable locations that are ahead of or diverged from the primary: every one with
    `auto_rejoin`, else those that were never a primary.

    A location that was never a primary holds only commits replicated from one, so its diverged
    versions are copies (a commit that slipped through the write fence's window): rejoin moves them
    into quarantine (nothing is deleted) and catches the location up, with no person needed.
    """
    from shared.failover.rejoin import rejoin

    writers = set() if table.auto_rejoin else ever_primary(table, topology)
    for lag in measure_table(replicator):
        if lag.status != ReplicaHealth.DIVERGED or lag.replica in writers:
            continue
        try:
            result = rejoin(runtime, table.name, lag.replica)
        except ReplicationError as err:
            log.warning("rejoin.failed table=%s location=%s epoch=%d error=%s", table.name, lag.replica,
                        topology.epoch, err, extra={"table": table.name, "location": lag.replica})
            continue
        log.info("rejoin.automatic table=%s location=%s epoch=%d quarantined=%s", table.name, lag.replica,
                 topology.epoch, result.versions, extra={"table": table.name, "location": lag.replica})
