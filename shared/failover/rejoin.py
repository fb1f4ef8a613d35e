"""Rejoin a former primary (or any location ahead of the primary) with quarantine.

After a forced promote at version P, the old primary may hold versions above P that were
written during the outage and never reached the new primary. Rejoin keeps them and makes the
location an ordinary replica again:

1. versions <= P must equal the primary's byte for byte, else it is a different table: refuse;
2. every version above P that is not the primary's (the first differing one and all after it)
   is copied, with its `.crc`/checkpoint files and every data/DV/CDC file its commit adds, to
   `<container>/_quarantine/<table path>/epoch-<E>/` in the location's own account (outside
   the table root, so retention never lists it), and each copy is verified (size and MD5);
   a manifest `quarantine.json` is written last;
3. `_last_checkpoint` is deleted if it names a quarantined checkpoint (catch-up brings the
   primary's back), then the log files are removed from the highest version down, so the
   location is a valid table at every instant;
4. the location catches up from the primary as an ordinary replica.

Every step is idempotent: a rerun after a crash anywhere converges (the manifest keeps the
versions a crashed run already removed). The quarantine is recorded on the location's
ReplicationStatus row and alerted once (DeltaReplication.WritesQuarantined).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

from shared import failpoints
from shared.delta.log import (
    LAST_CHECKPOINT,
    LOG_DIR,
    LogFileKind,
    TableRoot,
    parse_commit,
    parse_log_name,
    referenced_files,
)
from shared.errors import RejoinRefused, ReplicationError
from shared.storage.blob_table_store import BlobTableStore

log = logging.getLogger(__name__)

QUARANTINE_DIR = "_quarantine"
MANIFEST = "quarantine.json"
# Failpoints (SIGKILL tests): copies verified and manifest written; one log file removed; before catch-up;
# (corruption tests) copies written, not yet verified.
REJOIN_COPIED = "rejoin.copied"
REJOIN_VERIFYING = "rejoin.verifying"  # quarantine copies written, not yet compared with the originals
REJOIN_REMOVED = "rejoin.removed"
REJOIN_CATCH_UP = "rejoin.catch_up"


@dataclass
class RejoinResult:
    table: str
    location: str
    epoch: int
    promoted_at_version: int
    versions: list[int] = field(default_factory=list)  # quarantined versions (this run and earlier runs)
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
                "logFiles": len(self.log_files), "dataFiles": self.data_files,
                "quarantinePath": self.quarantine_path, "removedLogFiles": self.removed,
                "headAfter": self.head_after, "dryRun": self.dry_run}


def quarantine_root(location, epoch: int) -> str:
    """`_quarantine/<table path>/epoch-<E>`, in the location's container."""
    return f"{QUARANTINE_DIR}/{location.path}/epoch-{epoch}"


def quarantine_store(runtime, location, epoch: int) -> BlobTableStore:
    """The quarantine of `location` at `epoch`, laid out like a table (data files and `_delta_log/`)."""
    return BlobTableStore(runtime.clients[location.connection], location.container, quarantine_root(location, epoch),
                          label=f"{location.name}-quarantine", connection_name=location.connection)


def read_manifest(store: BlobTableStore) -> dict | None:
    try:
        return json.loads(store.get_file(MANIFEST))
    except FileNotFoundError:
        return None


def _md5(store: BlobTableStore, path: str) -> tuple[int, str]:
    """(size, MD5 hex) of a table-relative file, streamed chunk by chunk."""
    downloader = store.open_download(path)
    digest = hashlib.md5()  # noqa: S324 - a content check, not security
    size = 0
    for chunk in downloader.chunks():
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _commits(entries) -> dict[int, object]:
    return {lf.version: e for e in entries if (lf := parse_log_name(e.name)) and lf.kind == LogFileKind.COMMIT}


def _same(old: BlobTableStore, primary: BlobTableStore, mine, theirs) -> bool:
    if mine.size != theirs.size:
        return False
    if mine.content_md5 and theirs.content_md5:
        return mine.content_md5 == theirs.content_md5
    return old.get_log_file(mine.name) == primary.get_log_file(theirs.name)


def plan_quarantine(table, old: BlobTableStore, primary: BlobTableStore, promoted_at: int,
                    location: str) -> tuple[list[int], list]:
    """The versions of `old` to quarantine and `old`'s log listing.

    Raises:
        RejoinRefused: a version <= promoted_at differs from the primary's.
    """
    entries = old.list_log()
    mine = _commits(entries)
    theirs = _commits(primary.list_log())
    for v in sorted(mine):
        if v > promoted_at:
            break
        if v in theirs and not _same(old, primary, mine[v], theirs[v]):
            raise RejoinRefused(
                f"location {location} of table {table.name} has version {v} (at or before the promotion at "
                f"version {promoted_at}) with different content from the primary's: it is a different table. "
                "Nothing was changed; inspect both and restore the location from a snapshot."
            )
    ahead = [v for v in sorted(mine) if v > promoted_at]
    for i, v in enumerate(ahead):
        if v not in theirs or not _same(old, primary, mine[v], theirs[v]):
            return ahead[i:], entries
    return [], entries


def rejoin(runtime, table_name: str, location: str, *, dry_run: bool = False) -> RejoinResult:
    """Quarantine what `location` holds beyond the promotion, then make it a replica again.

    Raises:
        RejoinRefused: the location is the primary, the table was never promoted, or its
            history up to the promotion differs from the primary's.
        ReplicationError: storage failures (retryable ones: run it again).
    """
    table = runtime.config.table(table_name)
    topology = runtime.topology(table_name)
    if location == topology.primary:
        raise RejoinRefused(f"{location} is the primary of table {table_name} (epoch {topology.epoch}); only "
                            "another location can rejoin. Nothing was changed.")
    loc = table.location(location)
    if topology.epoch == 0 or topology.promoted_at_version is None:
        raise RejoinRefused(f"table {table_name} has never been promoted (epoch 0); there is nothing to rejoin. "
                            f"Use `python -m cli sync --table {table_name}` to catch a replica up.")
    replicator = runtime.replicator(table_name, topology)
    old = replicator.replicas[location]
    primary = replicator.source_store
    promoted_at = topology.promoted_at_version
    qstore = quarantine_store(runtime, loc, topology.epoch)
    result = RejoinResult(table_name, location, topology.epoch, promoted_at, dry_run=dry_run,
                          quarantine_path=f"{loc.container}/{quarantine_root(loc, topology.epoch)}")
    if dry_run:
        versions, entries = plan_quarantine(table, old, primary, promoted_at, location)
        manifest = read_manifest(qstore)
        result.versions = sorted(set(versions) | set(manifest["versions"] if manifest else []))
        result.log_files = _log_files(entries, set(versions))
        result.data_files = len(_data_files(table, old, versions))
        return result
    with runtime.lease_store().hold(f"rejoin/{table_name}"):
        with replicator.lease(old):  # no catch-up writes into the location while its log is trimmed
            versions, entries = plan_quarantine(table, old, primary, promoted_at, location)
            manifest = read_manifest(qstore)
            if versions:
                manifest = _quarantine(runtime, table, loc, topology, old, qstore, versions, entries, manifest)
                failpoints.hit(REJOIN_COPIED, location=location)
                _repair_last_checkpoint(old, versions[0] - 1)
                result.removed = _remove(old, entries, versions)
            if manifest is not None:
                result.versions = manifest["versions"]
                result.log_files = manifest["logFiles"]
                result.data_files = len(manifest["dataFiles"])
        failpoints.hit(REJOIN_CATCH_UP, location=location)
        outcome = next(o for o in replicator.replicate(None) if o.replica == location)
        if outcome.error is not None:
            raise outcome.error
        result.head_after = outcome.head_after
    if result.versions:
        result.alerted = _record(runtime, result)
    log.warning("rejoin.done table=%s location=%s epoch=%d quarantined=%s removed=%d head=%s", table_name, location,
                topology.epoch, result.versions, result.removed, result.head_after,
                extra={"table": table_name, "location": location, "epoch": topology.epoch})
    return result


def _log_files(entries, versions: set[int]) -> list[str]:
    """Log files of `versions`: commits, `.crc` and checkpoint files (not `_last_checkpoint`)."""
    return [e.name for e in entries if (lf := parse_log_name(e.name)) and lf.version in versions
            and lf.kind != LogFileKind.LAST_CHECKPOINT]


def _data_files(table, old: BlobTableStore, versions: list[int]) -> dict:
    root = TableRoot(old.account_name, old.container, old.root)
    files = {}
    for v in versions:
        actions = parse_commit(old.get_log_file(f"{v:020d}.json"), where=f"{old.description} version {v}")
        for f in referenced_files(actions, root, allow_external=table.allow_external_files,
                                  where=f"{old.description} version {v}"):
            files[f.path] = f
    return files


def _quarantine(runtime, table, loc, topology, old, qstore, versions, entries, manifest) -> dict:
    """Copy, verify (size and MD5), then write the manifest (the union with an earlier run's)."""
    names = _log_files(entries, set(versions))
    data = _data_files(table, old, versions)
    pool = runtime._file_pool
    copies = [pool.submit(qstore.copy_log_file_from, old, n) for n in names]
    copies += [pool.submit(qstore.copy_file_from, old, f.path, expected_size=f.size) for f in data.values()]
    for c in copies:
        c.result()
    failpoints.hit(REJOIN_VERIFYING, location=loc.name)
    checked = {}
    for path in [f"{LOG_DIR}/{n}" for n in names] + list(data):
        original, copy = pool.submit(_md5, old, path), pool.submit(_md5, qstore, path)
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
        "table": table.name, "location": loc.name, "epoch": topology.epoch, "primary": topology.primary,
        "promotedAtVersion": topology.promoted_at_version,
        "versions": sorted(set(previous.get("versions", [])) | set(versions)),
        "logFiles": sorted(set(previous.get("logFiles", [])) | set(names)),
        "dataFiles": sorted(set(previous.get("dataFiles", [])) | set(data)),
        "verified": {**previous.get("verified", {}), **{p: {"size": s, "md5": m} for p, (s, m) in checked.items()}},
        "createdAt": previous.get("createdAt") or datetime.now(timezone.utc).isoformat(),
    }
    blob = runtime.clients[loc.connection].get_blob_client(loc.container, f"{qstore.root}/{MANIFEST}")
    blob.upload_blob(json.dumps(doc, indent=1).encode(), overwrite=True)
    log.info("rejoin.quarantined table=%s location=%s epoch=%d versions=%s files=%d", table.name, loc.name,
             topology.epoch, versions, len(checked), extra={"table": table.name, "location": loc.name})
    return doc


def _repair_last_checkpoint(old: BlobTableStore, keep_head: int) -> None:
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
    blob = old._container.get_blob_client(f"{old.root}/{LOG_DIR}/{LAST_CHECKPOINT}")
    try:
        blob.delete_blob(etag=current.etag, match_condition=MatchConditions.IfNotModified)
    except (ResourceNotFoundError, ResourceModifiedError):
        pass  # gone, or replaced by catch-up with the primary's (which is at most its head)
    log.info("rejoin.last_checkpoint_removed location=%s version=%d", old.label, version)


def _remove(old: BlobTableStore, entries, versions: list[int]) -> int:
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
    if row.get("QuarantineAlertedEpoch") == result.epoch:
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
