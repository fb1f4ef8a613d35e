"""Propagate VACUUM and log cleanup from the primary to its replicas: the explicit retention path.

The only code, with snapshots, that deletes from a replica. Per replica, under its lease
(in the function app's storage), so it never races a commit whose files are being copied:

- Log files: older than the newest checkpoint at or before the oldest version to keep
  (the primary's oldest log version by default; `retention_hours` / `retain_versions` keep more).
- Data files (default, "mirror the primary"): every file the primary no longer has, except
  those the replica's newest version reads. A version whose files the primary vacuumed
  cannot be read on the primary any more, so it is not kept readable on replicas either:
  a purge (DELETE + VACUUM) reaches every region.
- Data files with `retention_hours` / `retain_versions`: additionally kept while a kept
  version references them, even after the primary vacuumed them.
- Nothing is deleted when the primary's `_delta_log` cannot be listed or is empty: an
  absent primary is not a primary that vacuumed everything.
- Nothing is deleted while the replica's log is not a byte-identical prefix of the primary's
  (checked in the same run, prefix.py): a diverged or ahead replica (a deposed primary, a
  fenced location) holds files only its lineage has; it keeps every one until rejoin has
  quarantined them. The status row's Detail says why nothing was purged.

`replicate_commit` runs this right after a replica receives a `VACUUM END` commit, so
purges arrive within seconds; the daily timer is the safety net.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from shared import failpoints
from shared.delta.head import log_versions
from shared.delta.log import (
    LOG_DIR,
    LogFileKind,
    commit_name,
    parse_commit,
    parse_log_name,
    referenced_files,
)
from shared.delta.paths import store_root
from shared.delta.source_log import complete_checkpoints
from shared.delta.table_state import table_state
from shared.errors import ReplicationError
from shared.maintenance.prefix import not_a_prefix

log = logging.getLogger(__name__)

# Folders under a table root that hold no data files: the log, and the lease folder that
# versions before leases moved to the function app's storage kept inside replicas.
_HIDDEN = ("_delta_log/", "_replication/")
LEGACY_LEASE_FOLDER = "_replication/"
from shared.failpoints import RETENTION_DELETING  # noqa: E402,F401 - named with the others


@dataclass
class RetentionResult:
    table: str
    replica: str
    keep_from_version: int | None = None
    dry_run: bool = False
    log_files: list[str] = field(default_factory=list)
    data_files: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    skipped: str | None = None  # why nothing was deleted, when a safety check stopped the run

    @property
    def files_freed(self) -> int:
        return 0 if self.dry_run else len(self.log_files) + len(self.data_files)


def _commit_millis(store, version: int) -> int | None:
    try:
        for action in parse_commit(store.get_log_file(commit_name(version)), where="retention"):
            info = action.get("commitInfo")
            if isinstance(info, dict):
                ms = info.get("inCommitTimestamp", info.get("timestamp"))
                if isinstance(ms, int):
                    return ms
    except Exception:  # noqa: BLE001 - unknown time: keep the version
        return None
    return None


def _keep_from(replica, source_versions: set[int], replica_commits: list[int], head: int, policy,
               now: datetime) -> int:
    if policy is None or (policy.retention_hours is None and policy.retain_versions is None):
        return min(source_versions) if source_versions else replica_commits[0]
    candidates = []
    if policy.retain_versions is not None:
        candidates.append(max(0, head - policy.retain_versions + 1))
    if policy.retention_hours is not None:
        cutoff = int((now - timedelta(hours=policy.retention_hours)).timestamp() * 1000)
        keep = head
        for v in replica_commits:
            ms = _commit_millis(replica, v)
            if ms is None or ms >= cutoff:
                keep = v
                break
        candidates.append(keep)
    return min(candidates)


def _files_of(actions: list[dict], root, where: str) -> set[str]:
    # The one path check: a hostile path stops retention before anything is deleted.
    return {f.path for f in referenced_files(actions, root, allow_external=True, where=where)}


def _mirrors_primary(policy) -> bool:
    return policy is None or (policy.retention_hours is None and policy.retain_versions is None)


def apply_replica_retention(replicator, name: str, *, now: datetime | None = None,
                            dry_run: bool | None = None) -> RetentionResult:
    """Apply one replica's retention policy; see the module docstring for what is deleted.

    Invariant: a data file is deleted only once the primary no longer has it, and never
    while the replica's newest version (or, with an explicit policy, a kept version) reads it.

    Args:
        replicator: the table's replicator.
        name: the replica's name.
        now: the current time, for retention_hours (default: now).
        dry_run: override the replica's configured dry_run.
    """
    now = now or datetime.now(timezone.utc)
    table = replicator.table
    store = replicator.replicas[name]
    policy = table.location(name).retention  # a former primary rejoined as a replica mirrors
    dry = dry_run if dry_run is not None else bool(policy and policy.dry_run)
    result = RetentionResult(table.name, name, dry_run=dry)
    fields = {"table": table.name, "replica": name, "dry_run": dry}
    with replicator.lease(store) as lease:
        entries = store.list_log("")
        commits = sorted(lf.version for e in entries if (lf := parse_log_name(e.name)) and lf.kind == LogFileKind.COMMIT)
        if not commits:
            return result
        head = max(log_versions(entries))
        # The replica is listed before the primary: a file the replica has came from the
        # primary, so if the later listing of the primary lacks it, the primary deleted it.
        replica_files = {f.name: f.size for f in store.list_files()}
        source_entries = replicator.source_store.list_log("")
        source_versions = log_versions(source_entries)
        if not source_versions:
            result.skipped = "the primary's _delta_log is empty or absent"
            log.warning("retention.skipped table=%s replica=%s reason=%s", table.name, name, result.skipped,
                        extra=fields)
            return result
        diverged = not_a_prefix(store, replicator.source_store, entries, source_entries)
        if diverged is not None:
            result.skipped = (f"{diverged}; nothing is purged until `python -m cli rejoin --table {table.name} "
                              f"--location {name}` has quarantined what only it holds")
            log.warning("retention.skipped table=%s replica=%s reason=%s", table.name, name, result.skipped,
                        extra=fields)
            return result
        primary_files = {f.name for f in replicator.source_store.list_files()}
        keep_from = min(_keep_from(store, source_versions, commits, head, policy, now), head)
        checkpoints = sorted(v for v in complete_checkpoints(entries) if v <= keep_from)
        base = checkpoints[-1] if checkpoints else min(log_versions(entries))
        result.keep_from_version = base
        # Log files of versions before the base checkpoint are not needed to read any kept version.
        result.log_files = [
            f"{LOG_DIR}/{e.name}" for e in entries
            if (lf := parse_log_name(e.name)) and lf.version is not None and lf.version < base
        ]
        root, where = store_root(store), f"table {table.name} replica {name} retention"
        if _mirrors_primary(policy):
            referenced = _files_of([{"add": a} for a in table_state(store, head).adds.values()], root, where)
        else:
            referenced = _files_of([{"add": a} for a in table_state(store, base).adds.values()], root, where)
            for v in commits:
                if v > base:
                    referenced |= _files_of(parse_commit(store.get_log_file(commit_name(v)), where="retention"), root,
                                            f"{where} version {v}")
        result.data_files = sorted(p for p in replica_files
                                   if not p.startswith(_HIDDEN) and p not in referenced and p not in primary_files)
        legacy = sorted(p for p in replica_files if p.startswith(LEGACY_LEASE_FOLDER))
        sizes = {**{f"{LOG_DIR}/{e.name}": e.size for e in entries}, **replica_files}
        result.bytes_freed = sum(sizes.get(p) or 0 for p in result.log_files + result.data_files)
        if not dry:
            # Log files first (oldest first), so a reader never finds a commit whose files went away.
            # Each deletion only while the lease is surely ours: a holder that could not renew
            # may be racing a catch-up that has it now.
            failpoints.hit(RETENTION_DELETING, replica=name)
            lease.check()
            store.delete_files(sorted(result.log_files))
            lease.check()
            store.delete_files(result.data_files)
            if legacy:
                lease.check()
                _remove_legacy_lease(store, legacy, table.name, name)
    action = "retention.dry_run" if dry else "retention.applied"
    log.info("%s table=%s replica=%s keep_from_version=%s log_files=%d data_files=%d bytes_freed=%d", action,
             table.name, name, result.keep_from_version, len(result.log_files), len(result.data_files),
             result.bytes_freed, extra={**fields, "bytes_freed": result.bytes_freed})
    for path in result.log_files + result.data_files:
        log.debug("%s.file table=%s replica=%s path=%s", action, table.name, name, path)
    return result


def _remove_legacy_lease(store, paths: list[str], table: str, replica: str) -> None:
    """The one deletion of a non-table blob: the lease folder earlier versions kept in replicas."""
    try:
        store.delete_files(paths)
    except ReplicationError as err:  # an old instance may still hold it; the next run retries
        log.warning("retention.legacy_lease_kept table=%s replica=%s error=%s", table, replica, err)
        return
    log.info("retention.legacy_lease_removed table=%s replica=%s paths=%s", table, replica, ",".join(paths),
             extra={"table": table, "replica": replica})


def purge_after_vacuum(replicator, outcomes, *, status=None) -> list[RetentionResult]:
    """Run retention on every replica that just received a `VACUUM END` commit.

    Called right after replication, with the replicator that replicated (the one from the
    current primary), so a purge on the primary reaches each region within seconds of its
    event. A failure is logged and left to the daily timer; it never fails the replication
    that triggered it.
    """
    results = []
    table_name = replicator.table.name
    for outcome in outcomes:
        if not outcome.vacuum_versions or outcome.replica not in replicator.replicas:
            continue
        try:
            result = apply_replica_retention(replicator, outcome.replica)
        except Exception as err:  # noqa: BLE001 - replication succeeded; the timer is the safety net
            log.warning("retention.after_vacuum_failed table=%s replica=%s error=%s", table_name, outcome.replica,
                        err, exc_info=not isinstance(err, ReplicationError))
            continue
        results.append(result)
        if status is not None:
            record_purge(status, result)
    return results


def record_purge(status, result: RetentionResult) -> None:
    """Record files and bytes freed in the replica's status row (and, when a safety check stopped
    the run, why nothing was purged, in Detail); a failure only logs."""
    try:
        status.record_purge(result.table, result.replica, files=result.files_freed, bytes_freed=result.bytes_freed)
        if result.skipped is not None:
            # record_quarantine is the status store's one writer of Detail alone (a MERGE).
            status.record_quarantine(result.table, result.replica,
                                     detail=f"retention purged nothing: {result.skipped}")
    except Exception as err:  # noqa: BLE001 - the purge happened; its record is best effort
        log.warning("retention.record_failed table=%s replica=%s error=%s", result.table, result.replica,
                    type(err).__name__)


def apply_retention(runtime, *, now: datetime | None = None, status=None) -> list[RetentionResult]:
    """Apply retention to every replica of every table, recording each in `status` when given.

    Follows the topology: after a failover the new primary is the reference and is never
    treated as a replica (its files are the ones every replica mirrors).
    """
    results = []
    for t in runtime.tables():
        replicator = runtime.replicator(t.name)
        for name in replicator.replicas:
            result = apply_replica_retention(replicator, name, now=now)
            if status is not None:
                record_purge(status, result)
            results.append(result)
    return results
