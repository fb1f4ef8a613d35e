"""Rejoin a former primary (or any location ahead of the primary) with quarantine.

After a forced promote at version P, the old primary may hold versions above P that were
written during the outage and never reached the new primary (and, after any promote, the
fence). Rejoin keeps them and makes the location an ordinary replica again:

1. find where the location left the primary's lineage (lineage.py: the first version d that is
   not the primary's, filed under the epoch of the last promotion before d, whichever of any
   number of failovers that was); a location sharing no commit is a different table: refuse;
2. every version from d on is copied, with its `.crc`/checkpoint files and every data/DV/CDC file its commit adds, to
   `<container>/_quarantine/<table path>/epoch-<E>/` in the location's own account (outside
   the table root, so retention never lists it), and each copy is verified (size and MD5);
   a manifest `quarantine.json` is written last. A later rejoin of the same location in the
   same epoch whose commits differ from the quarantined ones (a stale writer committed there
   after the first rejoin) gets its own place, `epoch-<E>-rejoin-<N>/` (N = 2, 3, ...): a
   quarantine is never overwritten;
3. `_last_checkpoint` is deleted if it names a quarantined checkpoint (catch-up brings the
   primary's back), then the log files are removed from the highest version down, so the
   location is a valid table at every instant;
4. the location catches up from the primary as an ordinary replica.

Every step is idempotent: a rerun after a crash anywhere converges (the manifest keeps the
versions a crashed run already removed). The quarantine is recorded on the location's
ReplicationStatus row and alerted once (DeltaReplication.WritesQuarantined).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from shared import failpoints
from shared.delta.log import (
    LOG_DIR,
    LogFileKind,
    TableRoot,
    commit_name,
    parse_commit,
    parse_log_name,
    referenced_files,
)
from shared.errors import RejoinRefused, ReplicationError
from shared.failover.fence import fence_location, is_fence
from shared.failover.lineage import plan_quarantine
from shared.storage.table_store import MaintenanceStore

log = logging.getLogger(__name__)

QUARANTINE_DIR = "_quarantine"
MANIFEST = "quarantine.json"
# Failpoints (SIGKILL tests): copies verified and manifest written; one log file removed; before catch-up;
# (corruption tests) copies written, not yet verified.
# Its failpoints, named with the others in shared/failpoints.py.
from shared.failpoints import REJOIN_CATCH_UP, REJOIN_COPIED, REJOIN_REMOVED, REJOIN_VERIFYING  # noqa: E402,F401


@dataclass
class RejoinResult:
    table: str
    location: str
    epoch: int
    promoted_at_version: int
    versions: list[int] = field(default_factory=list)  # quarantined versions (this run and earlier runs)
    fences: list[int] = field(default_factory=list)  # those of them that are fence commits (no writes)
    log_files: list[str] = field(default_factory=list)
    data_files: int = 0
    quarantine_path: str = ""
    removed: int = 0
    head_after: int | None = None
    dry_run: bool = False
    alerted: bool = False

    def as_json(self) -> dict:
        return {"table": self.table, "location": self.location, "epoch": self.epoch,
                "promotedAtVersion": self.promoted_at_version, "quarantinedVersions": self.versions,
                "fenceVersions": self.fences,
                "logFiles": len(self.log_files), "dataFiles": self.data_files,
                "quarantinePath": self.quarantine_path, "removedLogFiles": self.removed,
                "headAfter": self.head_after, "dryRun": self.dry_run}


# `epoch-<E>` (the first rejoin of an epoch) or `epoch-<E>-rejoin-<N>` (a later one, N >= 2).
QUARANTINE_NAME_RE = re.compile(r"^epoch-(\d+)(?:-rejoin-(\d+))?$")


def quarantine_root(location, epoch: int, slot: int = 1) -> str:
    """`_quarantine/<table path>/epoch-<E>` (slot 1) or `.../epoch-<E>-rejoin-<N>` (slot N), in the
    location's container."""
    base = f"{QUARANTINE_DIR}/{location.path}/epoch-{epoch}"
    return base if slot == 1 else f"{base}-rejoin-{slot}"


def quarantine_store(runtime, location, epoch: int, slot: int = 1) -> MaintenanceStore:
    """The quarantine of `location` at `epoch` (its `slot`-th), laid out like a table (data files and `_delta_log/`)."""
    return runtime.stores.folder(location, quarantine_root(location, epoch, slot), label=f"{location.name}-quarantine")


def quarantine_slots(runtime, location, epoch: int) -> list[int]:
    """The slots of `location`'s quarantines at `epoch` that exist (with or without a manifest), ascending."""
    quarantines = runtime.stores.folder(location, f"{QUARANTINE_DIR}/{location.path}",
                                        label=f"{location.name}-quarantine")
    slots = set()
    for folder in quarantines.list_subfolders():
        m = QUARANTINE_NAME_RE.match(folder)
        if m and int(m.group(1)) == epoch:
            slots.add(int(m.group(2) or 1))
    return sorted(slots)


def _choose_slot(runtime, loc, old: MaintenanceStore, epoch: int, versions: list[int]) -> tuple[int, dict | None]:
    """Where this rejoin quarantines, and that place's manifest (None: a new place, or a run that
    crashed before writing it). The newest quarantine of the epoch is reused when none of its
    verified commits differs from the location's commit at that version (a rerun after a crash,
    or more commits above); otherwise a stale writer committed after that rejoin and this one
    gets the next slot, so the first quarantine is never overwritten or mixed with it."""
    slots = quarantine_slots(runtime, loc, epoch)
    last = slots[-1] if slots else 1
    manifest = read_manifest(quarantine_store(runtime, loc, epoch, last))
    if manifest is None:
        return last, None
    verified = manifest.get("verified", {})
    for v in set(versions) & set(manifest.get("versions", [])):
        path = f"{LOG_DIR}/{commit_name(v)}"
        known = verified.get(path)
        if known is not None and old.digest(path) != (known["size"], known["md5"]):
            return last + 1, None
    return last, manifest


def read_manifest(store: MaintenanceStore) -> dict | None:
    try:
        return json.loads(store.get_file(MANIFEST))
    except FileNotFoundError:
        return None


def rejoin(runtime, table_name: str, location: str, *, dry_run: bool = False) -> RejoinResult:
    """Quarantine what `location` holds beyond the promotion, then make it a replica again.

    Raises:
        RejoinRefused: the location is the primary, the table was never promoted, or its
            history up to the promotion differs from the primary's.
        ReplicationError: storage failures (retryable ones: run it again).
    """
    table = runtime.table(table_name)
    topology = runtime.topology(table_name)
    if location == topology.primary:
        raise RejoinRefused(f"{location} is the primary of table {table_name} (epoch {topology.epoch}); only "
                            "another location can rejoin. Nothing was changed.")
    loc = table.location(location)
    if topology.epoch == 0 or topology.promoted_at_version is None:
        raise RejoinRefused(f"table {table_name} has never been promoted (epoch 0); there is nothing to rejoin. "
                            f"Use `python -m cli sync --table {table_name}` to catch a replica up.")
    history = runtime.topology_store().history(table)
    replicator = runtime.replicator(table_name, topology)
    old = replicator.replicas[location]
    primary = replicator.source_store
    if dry_run:
        plan = plan_quarantine(table, old, primary, history, location)
        slot, manifest = _choose_slot(runtime, loc, old, plan.epoch, plan.versions)
        result = _result(table_name, loc, plan, slot, dry_run=True)
        result.versions = sorted(set(plan.versions) | set(manifest["versions"] if manifest else []))
        result.log_files = _log_files(plan.entries, set(plan.versions))
        files, fences = _data_files(table, old, plan.versions)
        result.data_files, result.fences = len(files), fences
        return result
    with runtime.lease_store().hold(f"rejoin/{table_name}") as rejoin_lease:
        with replicator.lease(old) as location_lease:  # no catch-up writes into the location while trimmed
            def check() -> None:
                """Both leases surely ours: a rejoin that could not renew stops before its next write."""
                rejoin_lease.check()
                location_lease.check()

            plan = plan_quarantine(table, old, primary, history, location)
            slot, manifest = _choose_slot(runtime, loc, old, plan.epoch, plan.versions)
            qstore = quarantine_store(runtime, loc, plan.epoch, slot)
            check()
            if plan.versions and manifest is None:
                # Fence it first (a forced promote's old primary answers now): no writer commits
                # while its outage commits are copied; the fence is quarantined with them. Not on
                # a rerun after a crash past the manifest: that run's fence may be removed already,
                # and a new one would be another commit at a quarantined version.
                fence = fence_location(old, location=location, epoch=topology.epoch, primary=topology.primary)
                if fence is not None and fence.placed:
                    plan = plan_quarantine(table, old, primary, history, location)
            result = _result(table_name, loc, plan, slot, dry_run=False)
            versions, entries = plan.versions, plan.entries
            if versions:
                manifest = _quarantine(runtime, table, loc, topology, plan, old, qstore, versions, entries, manifest,
                                       check)
                failpoints.hit(REJOIN_COPIED, location=location)
                check()
                _repair_last_checkpoint(old, versions[0] - 1)
                result.removed = _remove(old, entries, versions, check)
            if manifest is not None:
                result.versions = manifest["versions"]
                result.fences = manifest.get("fences", [])
                result.log_files = manifest["logFiles"]
                result.data_files = len(manifest["dataFiles"])
        failpoints.hit(REJOIN_CATCH_UP, location=location)
        rejoin_lease.check()
        outcome = next(o for o in replicator.replicate(None) if o.replica == location)
        if outcome.error is not None:
            raise outcome.error
        result.head_after = outcome.head_after
        runtime.topology_store().record_rejoin(table, location, topology.epoch)
    if set(result.versions) - set(result.fences):
        result.alerted = _record(runtime, result)
    elif result.fences:
        log.info("rejoin.fence_removed table=%s location=%s versions=%s", table_name, location, result.fences,
                 extra={"table": table_name, "location": location})
    log.warning("rejoin.done table=%s location=%s epoch=%d quarantined=%s removed=%d head=%s", table_name, location,
                result.epoch, result.versions, result.removed, result.head_after,
                extra={"table": table_name, "location": location, "epoch": result.epoch})
    return result


def _result(table_name: str, loc, plan, slot: int, *, dry_run: bool) -> RejoinResult:
    return RejoinResult(table_name, loc.name, plan.epoch, plan.promoted_at_version, dry_run=dry_run,
                        quarantine_path=f"{loc.container}/{quarantine_root(loc, plan.epoch, slot)}")


def _log_files(entries, versions: set[int]) -> list[str]:
    """Log files of `versions`: commits, `.crc` and checkpoint files (not `_last_checkpoint`)."""
    return [e.name for e in entries if (lf := parse_log_name(e.name)) and lf.version in versions
            and lf.kind != LogFileKind.LAST_CHECKPOINT]


def _data_files(table, old: MaintenanceStore, versions: list[int]) -> tuple[dict, list[int]]:
    """The files the commits of `versions` reference, and which of those versions are fences."""
    root = TableRoot(old.account_name, old.container, old.root)
    files, fences = {}, []
    for v in versions:
        actions = parse_commit(old.get_log_file(commit_name(v)), where=f"{old.description} version {v}")
        if is_fence(actions):
            fences.append(v)
        for f in referenced_files(actions, root, allow_external=table.allow_external_files,
                                  where=f"{old.description} version {v}"):
            files[f.path] = f
    return files, fences


def _quarantine(runtime, table, loc, topology, plan, old, qstore, versions, entries, manifest, check) -> dict:
    """Copy, verify (size and MD5), then write the manifest (the union with an earlier run's)."""
    names = _log_files(entries, set(versions))
    data, fences = _data_files(table, old, versions)
    pool = runtime.executors.maintenance  # whole lineages: never in the way of replication's copies
    check()
    copies = [pool.submit(qstore.copy_log_file_from, old, n) for n in names]
    copies += [pool.submit(qstore.copy_file_from, old, f.path, expected_size=f.size) for f in data.values()]
    for c in copies:
        c.result()
    failpoints.hit(REJOIN_VERIFYING, location=loc.name)
    checked = {}
    for path in [f"{LOG_DIR}/{n}" for n in names] + list(data):
        original, copy = pool.submit(old.digest, path), pool.submit(qstore.digest, path)
        if original.result() != copy.result():
            # The bad copy goes (the original is untouched), or every rerun would find it and fail again.
            qstore.delete_files([path])
            raise ReplicationError(
                f"quarantine copy of {path} from {old.description} differs from the original (size or MD5); "
                "nothing was removed. Run rejoin again."
            )
        checked[path] = copy.result()
    previous = manifest or {}
    doc = {
        "table": table.name, "location": loc.name, "epoch": plan.epoch, "primary": topology.primary,
        "path": qstore.root,
        "promotedAtVersion": plan.promoted_at_version,
        "versions": sorted(set(previous.get("versions", [])) | set(versions)),
        "logFiles": sorted(set(previous.get("logFiles", [])) | set(names)),
        "dataFiles": sorted(set(previous.get("dataFiles", [])) | set(data)),
        "fences": sorted(set(previous.get("fences", [])) | set(fences)),
        "verified": {**previous.get("verified", {}), **{p: {"size": s, "md5": m} for p, (s, m) in checked.items()}},
        "createdAt": previous.get("createdAt") or datetime.now(timezone.utc).isoformat(),
    }
    check()
    qstore.put_file(MANIFEST, json.dumps(doc, indent=1).encode(), overwrite=True)
    log.info("rejoin.quarantined table=%s location=%s epoch=%d versions=%s files=%d", table.name, loc.name,
             plan.epoch, versions, len(checked), extra={"table": table.name, "location": loc.name})
    return doc


def _repair_last_checkpoint(old: MaintenanceStore, keep_head: int) -> None:
    """Delete `_last_checkpoint` if it names a version above `keep_head` (before any checkpoint it
    names is removed, so no reader is sent to a missing file). Catch-up writes the primary's."""
    current = old.get_last_checkpoint()
    if current is None:
        return
    try:
        version = int(json.loads(current.data)["version"])
    except (ValueError, KeyError, TypeError):
        version = keep_head + 1  # unreadable: readers cannot use it either
    if version <= keep_head:
        return
    # False: gone, or replaced by catch-up with the primary's (which is at most its head).
    old.delete_last_checkpoint(current.etag)
    log.info("rejoin.last_checkpoint_removed location=%s version=%d", old.label, version)


def _remove(old: MaintenanceStore, entries, versions: list[int], check) -> int:
    """Remove the quarantined log files, highest version first; per version `.crc` and checkpoint
    files before the commit, so the location is a table at every instant."""
    removed = 0
    by_version: dict[int, list[str]] = {}
    for e in entries:
        lf = parse_log_name(e.name)
        if lf is not None and lf.version in versions and lf.kind != LogFileKind.LAST_CHECKPOINT:
            by_version.setdefault(lf.version, []).append(e.name)
    for v in sorted(by_version, reverse=True):
        names = sorted(by_version[v], key=lambda n: n.endswith(".json") and n[:20].isdigit() and n[20:] == ".json")
        for name in names:
            check()
            removed += old.delete_files([f"{LOG_DIR}/{name}"])
            failpoints.hit(REJOIN_REMOVED, file=name)
    return removed


def _record(runtime, result: RejoinResult) -> bool:
    """Status row (Detail, Quarantine) and one WritesQuarantined alert per epoch; True if alerted now."""
    from shared.health.alerts import WRITES_QUARANTINED

    try:
        status = runtime.status_store()
    except ReplicationError:
        return False
    detail = (f"quarantined versions {result.versions} written during the outage (epoch {result.epoch}) at "
              f"{result.quarantine_path}; review with `python -m cli quarantine list --table {result.table}`")
    row = status.get_entity(result.table, result.location) or {}
    status.record_quarantine(result.table, result.location, detail=detail, quarantine=result.quarantine_path)
    # Once per quarantine: a later rejoin in the same epoch (its own place) is news again.
    if row.get("QuarantineAlertedEpoch") == result.epoch and row.get("Quarantine") in (None, result.quarantine_path):
        return False
    alerts = runtime.alert_publisher()
    if alerts is None:
        return False
    try:
        alerts.publish_event(WRITES_QUARANTINED, f"tables/{result.table}/replicas/{result.location}", {
            "table": result.table, "replica": result.location, "epoch": result.epoch,
            "versions": result.versions, "quarantinePath": result.quarantine_path})
    except Exception as err:  # noqa: BLE001 - not marked: the next rejoin or lag check tries again
        log.warning("alert.failed type=%s table=%s replica=%s error=%s", WRITES_QUARANTINED, result.table,
                    result.location, type(err).__name__)
        return False
    status.record_quarantine(result.table, result.location, alerted_epoch=result.epoch)
    return True
