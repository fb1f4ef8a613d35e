"""Propagate VACUUM and log cleanup from the primary to its replicas: the explicit retention path.

The only code, with snapshots, that deletes from a replica. Per replica: choose the oldest
version to keep (follow the primary's oldest log version by default, or `retention_hours`
and/or `retain_versions`, keeping whatever either requires); delete log files older than
the newest checkpoint at or before it; delete data files that no kept version references
*and* that the primary no longer has (it vacuumed them). Runs under the replica's
replication lease, so it never races a commit whose files are being copied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote

from shared.delta.log import (
    LOG_DIR,
    LogFileKind,
    commit_name,
    deletion_vector_path,
    parse_commit,
    parse_log_name,
)
from shared.replication.replicator import log_versions
from shared.delta.source_log import complete_checkpoints
from shared.delta.table_state import table_state

log = logging.getLogger(__name__)

_HIDDEN = ("_delta_log/", "_replication/")


@dataclass
class RetentionResult:
    table: str
    replica: str
    keep_from_version: int | None = None
    dry_run: bool = False
    log_files: list[str] = field(default_factory=list)
    data_files: list[str] = field(default_factory=list)


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


def _files_of(actions: list[dict]) -> set[str]:
    files = set()
    for action in actions:
        for key in ("add", "cdc"):
            body = action.get(key)
            if isinstance(body, dict) and isinstance(body.get("path"), str) and "://" not in body["path"]:
                files.add(unquote(body["path"]))
                dv = body.get("deletionVector") if key == "add" else None
                if dv:
                    dv_path = deletion_vector_path(dv)
                    if dv_path and "://" not in dv_path:
                        files.add(dv_path)
    return files


def apply_replica_retention(replicator, name: str, *, now: datetime | None = None,
                            dry_run: bool | None = None) -> RetentionResult:
    """Apply one replica's retention policy; see the module docstring for what is deleted.

    Args:
        replicator: the table's replicator.
        name: the replica's name.
        now: the current time, for retention_hours (default: now).
        dry_run: override the replica's configured dry_run.
    """
    now = now or datetime.now(timezone.utc)
    table = replicator.table
    store = replicator.replicas[name]
    policy = table.replica(name).retention
    dry = dry_run if dry_run is not None else bool(policy and policy.dry_run)
    result = RetentionResult(table.name, name, dry_run=dry)
    with store.replication_lease():
        entries = store.list_log("")
        commits = sorted(lf.version for e in entries if (lf := parse_log_name(e.name)) and lf.kind == LogFileKind.COMMIT)
        if not commits:
            return result
        head = max(log_versions(entries))
        source_versions = log_versions(replicator.source_store.list_log(""))
        keep_from = min(_keep_from(store, source_versions, commits, head, policy, now), head)
        checkpoints = sorted(v for v in complete_checkpoints(entries) if v <= keep_from)
        base = checkpoints[-1] if checkpoints else min(log_versions(entries))
        result.keep_from_version = base
        # Log files of versions before the base checkpoint are not needed to read any kept version.
        result.log_files = [
            f"{LOG_DIR}/{e.name}" for e in entries
            if (lf := parse_log_name(e.name)) and lf.version is not None and lf.version < base
        ]
        referenced = set()
        state = table_state(store, base)
        referenced |= _files_of([{"add": a} for a in state.adds.values()])
        for v in commits:
            if v >= base:
                referenced |= _files_of(parse_commit(store.get_log_file(commit_name(v)), where="retention"))
        candidates = [f.name for f in store.list_files()
                      if not f.name.startswith(_HIDDEN) and f.name not in referenced]
        # Only what the primary has already deleted: a file still on the primary may belong
        # to a commit being replicated right now, or the primary has simply not vacuumed yet.
        result.data_files = [p for p in candidates if replicator.source_store.file_size(p) is None]
        if not dry:
            # Log files first (oldest first), so a reader never finds a commit whose files went away.
            store.delete_files(sorted(result.log_files))
            store.delete_files(result.data_files)
    action = "retention.dry_run" if dry else "retention.applied"
    log.info("%s table=%s replica=%s keep_from_version=%s log_files=%d data_files=%d", action, table.name, name,
             result.keep_from_version, len(result.log_files), len(result.data_files),
             extra={"table": table.name, "replica": name, "dry_run": dry})
    for path in result.log_files + result.data_files:
        log.debug("%s.file table=%s replica=%s path=%s", action, table.name, name, path)
    return result


def apply_retention(runtime, *, now: datetime | None = None) -> list[RetentionResult]:
    """Apply retention to every replica of every table."""
    return [apply_replica_retention(runtime.replicators[t.name], r.name, now=now)
            for t in runtime.config.tables for r in t.replicas]
