"""List quarantined commits and replay their blind appends onto the current primary.

Only blind appends (`add` actions with `dataChange: true`, nothing else but `commitInfo`) are
replayed: their data files are copied into the primary, then one commit per quarantined
commit is made through deltalake carrying a Delta `txn` action (appId
`quarantine/<table>/epoch-<E>/<first 16 hex of the SHA-256 of the quarantined commit file>`,
version = the original version). Keyed by content, not by (epoch, version): two locations
quarantined in one epoch may each hold a different commit at the same version (both are
applied), while one commit quarantined in two places (a replica that got it through the
write-fence window, and the deposed primary) is applied once. Before each commit the primary's
`txn` for that appId is read, so a rerun applies nothing twice. Replays made before this scheme
recorded `quarantine/<table>/epoch-<E>` with the version and `replayedFrom` "<location> epoch
<E> version <V>" in commitInfo: a commit whose bytes equal one so recorded counts as applied.
Deletes, updates, merges and schema changes are listed for a person to decide. A fence commit
(fence.py; the protocol change that stopped writers on a deposed primary) is listed as the
fence and never replayed: it holds no rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

from shared.delta.log import commit_name, parse_commit
from shared.delta.paths import store_root, table_path
from shared.errors import ReplicationError
from shared.failover.fence import is_fence
from shared.failover.rejoin import MANIFEST, QUARANTINE_DIR, QUARANTINE_NAME_RE
from shared.storage.locations import deltalake_options, deltalake_uri
from shared.storage.table_store import MaintenanceStore

log = logging.getLogger(__name__)

_BLIND_APPEND_ACTIONS = {"add", "commitInfo"}
DIGEST_CHARS = 16  # 64 bits of SHA-256: distinct commits of one table and epoch never collide in practice


@dataclass
class QuarantinedCommit:
    location: str
    epoch: int
    version: int
    operation: str
    rows_added: int
    files_added: int
    files_removed: int
    blind_append: bool
    actions: list = field(default_factory=list, repr=False)
    fence: bool = False

    def as_json(self) -> dict:
        return {"location": self.location, "epoch": self.epoch, "version": self.version,
                "operation": self.operation, "rowsAdded": self.rows_added, "filesAdded": self.files_added,
                "filesRemoved": self.files_removed, "blindAppend": self.blind_append, "fence": self.fence}


def classify(location: str, epoch: int, version: int, actions: list[dict]) -> QuarantinedCommit:
    """Summarise one quarantined commit; a blind append has only dataChange adds (and commitInfo)."""
    info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {}) or {}
    adds = [a["add"] for a in actions if "add" in a]
    removes = [a["remove"] for a in actions if "remove" in a]
    kinds = {k for a in actions for k in a}
    rows = 0
    for add in adds:
        try:
            rows += int(json.loads(add.get("stats") or "{}").get("numRecords", 0))
        except (ValueError, TypeError):
            pass
    blind = bool(adds) and kinds <= _BLIND_APPEND_ACTIONS and all(a.get("dataChange") is True for a in adds)
    return QuarantinedCommit(location, epoch, version, str(info.get("operation", "?")), rows, len(adds),
                             len(removes), blind, actions, fence=is_fence(actions))


def _manifests(runtime, table) -> list[tuple[object, dict, MaintenanceStore]]:
    """(location, manifest, quarantine store) of every quarantine of the table (every rejoin's
    place, `epoch-<E>` and `epoch-<E>-rejoin-<N>`), in every reachable location."""
    found = []
    for loc in table.locations:
        quarantines = runtime.stores.folder(loc, f"{QUARANTINE_DIR}/{loc.path}", label=f"{loc.name}-quarantine")
        try:
            folders = [f for f in quarantines.list_subfolders() if QUARANTINE_NAME_RE.match(f)]
        except ReplicationError as err:  # an unreachable location is reported, the others listed
            log.warning("quarantine.unlisted table=%s location=%s error=%s", table.name, loc.name, type(err).__name__)
            continue
        for folder in folders:
            store = quarantines.child(folder)
            try:
                doc = json.loads(store.get_file(MANIFEST))
            except FileNotFoundError:
                continue  # a rejoin that crashed before its manifest: nothing verified there yet
            m = QUARANTINE_NAME_RE.match(folder)
            found.append((int(m.group(2) or 1), loc, doc, store))
    return [(loc, doc, store) for _, loc, doc, store in
            sorted(found, key=lambda x: (x[2]["epoch"], x[1].name, x[0]))]


def list_quarantine(runtime, table_name: str) -> list[QuarantinedCommit]:
    """Every quarantined commit of the table, by epoch and version (empty when none)."""
    table = runtime.table(table_name)
    commits = []
    for loc, manifest, store in _manifests(runtime, table):
        for v in manifest["versions"]:
            actions = parse_commit(store.get_log_file(commit_name(v)), where=f"{store.description} version {v}")
            commits.append(classify(loc.name, manifest["epoch"], v, actions))
    return commits


def digest(commit: bytes) -> str:
    return hashlib.sha256(commit).hexdigest()[:DIGEST_CHARS]


def _legacy_applied(dt, legacy_id: str, epoch: int, matches) -> set[str]:
    """Digests of the commits a replay before the content-keyed appIds applied: those whose
    (location, epoch, version) a `replayedFrom` on the primary names, at most the version that
    legacy appId records (empty, reading nothing more, when it records none)."""
    done = dt.transaction_version(legacy_id)
    if done is None:
        return set()
    replayed = {str(c["replayedFrom"]) for c in dt.history() if c.get("replayedFrom")}
    applied = set()
    for loc, manifest, store in matches:
        if store.root != f"{QUARANTINE_DIR}/{loc.path}/epoch-{epoch}":
            continue  # a later rejoin's place: no legacy replay ever read it
        for v in manifest["versions"]:
            if v <= done and f"{loc.name} epoch {epoch} version {v}" in replayed:
                applied.add(digest(store.get_log_file(commit_name(v))))
    return applied


@dataclass
class ReplayResult:
    app_id: str  # the prefix of every appId of this epoch: `quarantine/<table>/epoch-<E>`
    applied: list[int] = field(default_factory=list)
    app_ids: list[str] = field(default_factory=list)  # one per applied version, same order
    already_applied: list[int] = field(default_factory=list)
    needs_review: list[QuarantinedCommit] = field(default_factory=list)
    fences: list[int] = field(default_factory=list)  # fence commits: skipped, they hold no rows
    primary_head: int | None = None
    dry_run: bool = False

    def as_json(self) -> dict:
        return {"appId": self.app_id, "applied": self.applied, "appIds": self.app_ids,
                "alreadyApplied": self.already_applied,
                "needsReview": [c.as_json() for c in self.needs_review], "fences": self.fences,
                "primaryHead": self.primary_head,
                "dryRun": self.dry_run}


def replay(runtime, table_name: str, epoch: int, *, dry_run: bool = False) -> ReplayResult:
    """Re-apply the blind appends quarantined at `epoch` to the current primary, each once.

    Raises:
        ReplicationError: no quarantine exists for that epoch.
    """
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction, CommitProperties, Transaction

    table = runtime.table(table_name)
    matches = [(loc, m, store) for loc, m, store in _manifests(runtime, table) if m["epoch"] == epoch]
    if not matches:
        raise ReplicationError(f"table {table_name} has no quarantine for epoch {epoch}; list them with "
                               f"`python -m cli quarantine list --table {table_name}`. Nothing was changed.")
    topology = runtime.topology(table_name)
    primary_loc = table.location(topology.primary)
    primary = runtime.replicator(table_name, topology).source_store
    uri = deltalake_uri(primary_loc)
    options = deltalake_options(runtime.settings[primary_loc.connection])
    epoch_id = f"quarantine/{table_name}/epoch-{epoch}"  # the appIds' prefix (and the legacy appId)
    result = ReplayResult(epoch_id, dry_run=dry_run)
    legacy = _legacy_applied(DeltaTable(uri, storage_options=options), epoch_id, epoch, matches)
    planned: set[str] = set()  # this dry run's: one commit in two quarantines would be applied once
    for loc, manifest, qstore in matches:
        for v in manifest["versions"]:
            raw = qstore.get_log_file(commit_name(v))
            actions = parse_commit(raw, where=f"{qstore.description} version {v}")
            commit = classify(loc.name, epoch, v, actions)
            if commit.fence:
                result.fences.append(v)
                continue
            if not commit.blind_append:
                result.needs_review.append(commit)
                continue
            key = digest(raw)
            app_id = f"{epoch_id}/{key}"
            dt = DeltaTable(uri, storage_options=options)
            if key in legacy or key in planned or dt.transaction_version(app_id) is not None:
                result.already_applied.append(v)
                continue
            if dry_run:
                planned.add(key)
                result.applied.append(v)
                result.app_ids.append(app_id)
                continue
            adds = [a["add"] for a in actions if "add" in a]
            # The one path check, before anything is copied into the primary.
            paths = [table_path(add.get("path"), store_root(qstore), allow_external=False, what="add",
                                where=f"quarantined version {v} of table {table_name}") for add in adds]
            for add, path in zip(adds, paths):
                primary.copy_file_from(qstore, path, expected_size=add.get("size"))
            dt.create_write_transaction(
                # deltalake takes the decoded path and encodes it in the log itself.
                actions=[AddAction(path, int(add["size"]), add.get("partitionValues") or {},
                                   int(add.get("modificationTime", 0)), True, add.get("stats") or "")
                         for add, path in zip(adds, paths)],
                mode="append", schema=dt.schema(), partition_by=dt.metadata().partition_columns or None,
                commit_properties=CommitProperties(
                    app_transactions=[Transaction(app_id, v)],
                    custom_metadata={"replayedFrom": f"{loc.name} epoch {epoch} version {v}",
                                     "replayedFromQuarantine": qstore.root}),
            )
            result.applied.append(v)
            result.app_ids.append(app_id)
            log.warning("quarantine.replayed table=%s epoch=%d version=%d primary=%s files=%d app_id=%s", table_name,
                        epoch, v, topology.primary, len(adds), app_id,
                        extra={"table": table_name, "epoch": epoch, "version": v})
    if not dry_run:
        result.primary_head = DeltaTable(uri, storage_options=options).version()
    return result
