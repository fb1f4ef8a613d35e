"""Fence a deposed primary for writers: a protocol commit no protocol-compliant writer accepts.

After a promote, writers that never heard of it may still commit to the old primary. The
fence is one commit on top of the old primary's log whose `protocol` action raises
minWriterVersion to 7 and adds the writer feature `delta-replication-fenced`, which no
writer supports: Spark and delta-rs refuse to commit there (delta-rs: `CommitFailedError:
Unsupported table features required: [Unknown("delta-replication-fenced")]`) while readers,
whose protocol is unchanged, still read. The writer features the old protocol implied (a
legacy minWriterVersion N implies appendOnly, invariants, checkConstraints, changeDataFeed,
generatedColumns, columnMapping, identityColumns up to N) are listed, so the fenced table
enforces what the old one did.

The fence sits above the promotion version, so rejoin quarantines it with the outage commits
and the location ends byte-identical to the primary; `quarantine list` shows it as the fence
and replay skips it. It is written with the app's tagged client request id, so it raises no
replication event.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from shared.delta.head import find_latest_version
from shared.delta.log import LogFileKind, commit_name, parse_commit, parse_log_name
from shared.delta.source_log import complete_checkpoints
from shared.delta.table_state import _clean
from shared.errors import CommitNotFound, ReplicaBusy

log = logging.getLogger(__name__)

FENCE_FEATURE = "delta-replication-fenced"
FENCE_OPERATION = "REPLICATION FENCE"
# The Delta protocol's legacy writer versions and the table features each implies (cumulative).
_LEGACY_WRITER_FEATURES = [
    (2, ("appendOnly", "invariants")),
    (3, ("checkConstraints",)),
    (4, ("changeDataFeed", "generatedColumns")),
    (5, ("columnMapping",)),
    (6, ("identityColumns",)),
]
_ATTEMPTS = 5


def implied_writer_features(min_writer_version: int) -> list[str]:
    """The writer features a legacy minWriterVersion (< 7) implies."""
    return [f for version, features in _LEGACY_WRITER_FEATURES if version <= min_writer_version for f in features]


def fenced_protocol(protocol: dict) -> dict:
    """`protocol` with minWriterVersion 7 and `delta-replication-fenced` added to its writer
    features (the legacy ones made explicit); the reader side unchanged."""
    reader = int(protocol.get("minReaderVersion", 1))
    writer = int(protocol.get("minWriterVersion", 2))
    features = list(protocol.get("writerFeatures") or []) if writer >= 7 else implied_writer_features(writer)
    if FENCE_FEATURE not in features:
        features.append(FENCE_FEATURE)
    fenced = {"minReaderVersion": reader, "minWriterVersion": 7}
    if reader >= 3:
        fenced["readerFeatures"] = list(protocol.get("readerFeatures") or [])
    fenced["writerFeatures"] = features
    return fenced


def is_fence(actions: list[dict]) -> bool:
    """True when a commit's actions add the fence feature (the fence commit itself)."""
    return any(FENCE_FEATURE in ((a.get("protocol") or {}).get("writerFeatures") or []) for a in actions)


def _commit_time(actions: list[dict]) -> int | None:
    info = next((a["commitInfo"] for a in actions if isinstance(a.get("commitInfo"), dict)), {})
    value = info.get("inCommitTimestamp")
    return value if isinstance(value, int) else None


def fence_commit(protocol: dict, metadata: dict, previous: list[dict], *, epoch: int, primary: str) -> bytes:
    """The fence commit's bytes: commitInfo (first, with an in-commit timestamp when the table
    has them, after the previous commit's) and the fenced protocol."""
    now = int(time.time() * 1000)
    info = {"timestamp": now, "operation": FENCE_OPERATION,
            "operationParameters": {"epoch": str(epoch), "primary": primary},
            "engineInfo": "delta-replication", "isBlindAppend": False}
    if (metadata.get("configuration") or {}).get("delta.enableInCommitTimestamps") == "true":
        info["inCommitTimestamp"] = max(now, (_commit_time(previous) or 0) + 1)
    actions = [{"commitInfo": info}, {"protocol": fenced_protocol(protocol)}]
    return ("\n".join(json.dumps(a, separators=(",", ":")) for a in actions) + "\n").encode()


def protocol_and_metadata(store, head: int, head_actions: list[dict]) -> tuple[dict, dict]:
    """The table's protocol and metaData at `head`: the newest commits first, then only those two
    columns of the checkpoint below them (never every add action: a fence must not cost the
    memory of the table's file list).

    Raises:
        CommitNotFound: neither the commits nor a checkpoint hold them.
    """
    import io

    import pyarrow.parquet as pq

    entries = store.list_log("")
    commits = {lf.version for e in entries if (lf := parse_log_name(e.name)) and lf.kind == LogFileKind.COMMIT}
    checkpoints = {v: names for v, names in complete_checkpoints(entries).items() if v <= head}
    base = max(checkpoints) if checkpoints else -1
    found: dict[str, dict] = {}
    for v in range(head, base, -1):
        if v not in commits:
            break
        actions = head_actions if v == head else parse_commit(store.get_log_file(commit_name(v)),
                                                              where=f"{store.description} version {v}")
        for action in actions:
            for key in ("protocol", "metaData"):
                if key in action and key not in found:
                    found[key] = action[key]
        if len(found) == 2:
            return found["protocol"], found["metaData"]
    for name in checkpoints.get(base, []):
        data = store.get_log_file(name)
        if name.endswith(".json"):
            rows = parse_commit(data, where=f"{store.description} {name}")
        else:
            table = pq.read_table(io.BytesIO(data), columns=[c for c in ("protocol", "metaData")
                                                            if c in pq.read_schema(io.BytesIO(data)).names])
            rows = [{c: _clean(r)} for c in table.column_names for r in table.column(c).to_pylist() if r is not None]
        for row in rows:
            for key in ("protocol", "metaData"):
                if key in row and key not in found:
                    found[key] = row[key]
    if len(found) < 2:
        raise CommitNotFound(f"{store.description}: no protocol or metaData at or below version {head}; not fenced")
    return found["protocol"], found["metaData"]


@dataclass(frozen=True)
class Fence:
    """A location's fence: the version it sits at; `placed` when this call wrote it."""

    location: str
    version: int
    placed: bool


def fence_location(store, *, location: str, epoch: int, primary: str) -> Fence | None:
    """Put the fence on top of `store`'s log, unless its head is a fence already.

    Conditional create, like a writer's commit: a writer that committed first moves the fence
    one version up. Returns None when the location holds no table.

    Raises:
        ReplicaUnreachable: the location does not answer (the fence is placed later: at rejoin,
            or when `fence_deposed` runs again).
        ReplicaBusy: writers won every attempt.
    """
    for _ in range(_ATTEMPTS):
        head = find_latest_version(store)
        if head is None:
            return None
        where = f"{store.description} version {head}"
        previous = parse_commit(store.get_log_file(commit_name(head)), where=where)
        if is_fence(previous):
            return Fence(location, head, placed=False)
        protocol, metadata = protocol_and_metadata(store, head, previous)
        data = fence_commit(protocol, metadata, previous, epoch=epoch, primary=primary)
        if store.create_log_file(commit_name(head + 1), data):
            log.warning("fence.placed location=%s version=%d epoch=%d primary=%s", location, head + 1, epoch, primary,
                        extra={"location": location, "version": head + 1, "epoch": epoch})
            return Fence(location, head + 1, placed=True)
    raise ReplicaBusy(f"fencing {location}: writers committed first {_ATTEMPTS} times in a row; it will be retried.")


def fence_deposed(runtime, table_name: str, topology=None) -> list[Fence]:
    """Fence every former primary of the table that answers and does not follow the primary yet.

    The hook for whatever meets a deposed primary first (the lag check, rejoin): after a forced
    promote the old primary could not be fenced, so it is fenced as soon as it answers. A former
    primary whose head is beyond its promotion version and byte-identical to the primary's
    commit there already follows the new lineage (replication reached it first): a replica, not
    fenced. A location that does not answer is skipped (logged); the next call tries again.

    Returns:
        The fences found or placed.
    """
    from shared.errors import ReplicationError

    topology = topology or runtime.topology(table_name)
    if topology.epoch == 0:
        return []
    table = runtime.table(table_name)
    history, rejoins = runtime.topology_store().lineage_of(table, topology)
    replicator = runtime.replicator(table_name, topology)
    fences = []
    for location in dict.fromkeys(h.previous_primary for h in history if h.previous_primary):
        store = replicator.replicas.get(location)
        if store is None:
            continue
        deposed_at = max(h.epoch for h in history if h.previous_primary == location)
        if rejoins.get(location, -1) >= deposed_at:
            continue  # rejoined since: a replica (even one whose head is exactly the promotion version)
        promoted_at = max(h.promoted_at_version for h in history if h.previous_primary == location)
        try:
            if _follows(store, replicator.source_store, promoted_at):
                continue
            fence = fence_location(store, location=location, epoch=topology.epoch, primary=topology.primary)
        except ReplicationError as err:
            log.warning("fence.failed table=%s location=%s error=%s", table_name, location, err,
                        extra={"table": table_name, "location": location})
            continue
        if fence is not None:
            fences.append(fence)
    if any(f.placed for f in fences):
        from shared.failover.markers import PromotionMarkers

        # A location fenced now may have been down at the promote: it gets its marker too.
        PromotionMarkers(runtime).write(table, history)
    return fences


def _follows(store, primary, promoted_at: int) -> bool:
    """The location's head is beyond `promoted_at` and byte-identical to the primary's commit there."""
    head = find_latest_version(store)
    if head is None or head <= promoted_at:
        return False
    try:
        return store.get_log_file(commit_name(head)) == primary.get_log_file(commit_name(head))
    except FileNotFoundError:
        return False
