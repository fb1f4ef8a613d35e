"""Reconstruct a table's state at a version: protocol, metaData and the active add actions.

Reads the newest complete checkpoint at or before the version, then replays the commits
after it, keyed as the protocol keys logical files: (path, deletion vector id).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

from shared.delta.log import (
    LogFileKind,
    TableRoot,
    commit_name,
    parse_commit,
    parse_log_name,
    referenced_files,
    sidecar_name,
)
from shared.delta.paths import store_root
from shared.delta.source_log import complete_checkpoints
from shared.errors import CommitNotFound
from shared.storage.table_store import TableStore


@dataclass
class TableState:
    version: int
    protocol: dict
    metadata: dict
    adds: dict[tuple, dict]


def _file_key(action: dict) -> tuple:
    dv = action.get("deletionVector") or {}
    return action["path"], dv.get("storageType"), dv.get("pathOrInlineDv"), dv.get("offset")


_MAP_FIELDS = {"partitionValues", "tags", "configuration", "options"}


def _clean(value, key: str | None = None):
    """pyarrow rows -> Delta JSON: drop nulls, turn map columns (lists of pairs) into objects."""
    if key in _MAP_FIELDS:
        return {k: v for k, v in (value or [])} if isinstance(value, list) or value is None else value
    if isinstance(value, dict):
        return {k: _clean(v, k) for k, v in value.items() if v is not None or k == "partitionValues"}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _checkpoint_rows(data: bytes, *, is_json: bool) -> list[dict]:
    if is_json:
        return parse_commit(data, where="checkpoint")
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    actions = []
    for name in ("protocol", "metaData", "add", "sidecar"):
        if name not in table.column_names:
            continue
        for row in table.column(name).to_pylist():
            if row is None:
                continue
            cleaned = _clean(row)
            if name == "add":
                # Parsed copies of stats/partition values are checkpoint-only columns.
                cleaned.pop("stats_parsed", None)
                cleaned.pop("partitionValues_parsed", None)
            if name == "metaData" and isinstance(cleaned.get("format"), dict):
                cleaned["format"].setdefault("options", {})
            actions.append({name: cleaned})
    return actions


def table_state(store: TableStore, version: int) -> TableState:
    """The state of the table in `store` at `version`.

    Raises:
        CommitNotFound: the store cannot reconstruct that version (no checkpoint at or
            before it and no commit 0, or a missing commit after the checkpoint).
    """
    entries = store.list_log("")
    checkpoints = {v: names for v, names in complete_checkpoints(entries).items() if v <= version}
    commits = {lf.version for e in entries if (lf := parse_log_name(e.name)) and lf.kind == LogFileKind.COMMIT}
    state = TableState(version=version, protocol={}, metadata={}, adds={})
    root = store_root(store)
    start = 0
    if checkpoints:
        base = max(checkpoints)
        for name in checkpoints[base]:
            rows = _checkpoint_rows(store.get_log_file(name), is_json=name.endswith(".json"))
            where = f"{store.description} checkpoint {name}"
            sidecars = [sidecar_name(r["sidecar"].get("path"), root, where=where) for r in rows if "sidecar" in r]
            for sidecar in sidecars:
                rows += _checkpoint_rows(store.get_log_file(sidecar), is_json=False)
            for row in rows:
                _apply(row, state, root, where)
        start = base + 1
    for v in range(start, version + 1):
        if v not in commits:
            raise CommitNotFound(f"{store.description}: version {v} is missing; cannot rebuild version {version}")
        where = f"{store.description} version {v}"
        for action in parse_commit(store.get_log_file(commit_name(v)), where=where):
            _apply(action, state, root, where)
    if not state.protocol or not state.metadata:
        raise CommitNotFound(f"{store.description}: no protocol or metaData at version {version}")
    return state


def _apply(action: dict, state: TableState, root: TableRoot, where: str) -> None:
    """Replay one checkpoint row or commit action onto the state; every file path passes the one
    path check first (external files are kept as they are: readers of the state decide)."""
    referenced_files([action], root, allow_external=True, where=where)
    if "protocol" in action:
        state.protocol = action["protocol"]
    elif "metaData" in action:
        state.metadata = action["metaData"]
    elif "add" in action:
        state.adds[_file_key(action["add"])] = action["add"]
    elif "remove" in action:
        state.adds.pop(_file_key(action["remove"]), None)


def state_commit(state: TableState, *, timestamp_ms: int, operation: str, parameters: dict) -> bytes:
    """A version-0 commit that recreates `state` as a new, self-contained table."""
    import uuid

    metadata = dict(state.metadata)
    metadata["id"] = str(uuid.uuid4())  # a copy is a new table, as a deep clone is
    info = {"timestamp": timestamp_ms, "operation": operation, "operationParameters": parameters,
            "isBlindAppend": False}
    config = metadata.get("configuration") or {}
    if str(config.get("delta.enableInCommitTimestamps", "")).lower() == "true":
        info["inCommitTimestamp"] = timestamp_ms
    lines = [{"commitInfo": info}, {"protocol": state.protocol}, {"metaData": metadata}]
    for add in state.adds.values():
        copy = dict(add)
        copy["dataChange"] = True
        lines.append({"add": copy})
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
