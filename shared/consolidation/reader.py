"""The rows a source's commits introduced: data-changing adds of versions (start, end], batch by batch.

Reads the commits' JSON and only the files their `add` actions name, never the source's
snapshot, so a run's cost follows the new commits, not the table's size. Compaction
(`dataChange: false`) and a file re-added with a new deletion vector introduce no rows.
Memory: one data file's bytes plus at most `max_bytes` of buffered rows.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shared.config.model import ConsolidationSource
from shared.consolidation.deletion_vectors import DeletionVectorError, deleted_rows
from shared.delta.head import find_latest_version
from shared.delta.log import commit_name, parse_commit, referenced_files
from shared.delta.paths import deletion_vector_file, store_root, table_path
from shared.delta.table_state import table_state
from shared.errors import CommitIncomplete, ConsolidationFailed, SourceHistoryMissing
from shared.storage.table_store import TableStore

log = logging.getLogger(__name__)

READ_BATCH_ROWS = 65_536

_PRIMITIVES = {
    "string": pa.string(), "long": pa.int64(), "integer": pa.int32(), "short": pa.int16(), "byte": pa.int8(),
    "double": pa.float64(), "float": pa.float32(), "boolean": pa.bool_(), "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"), "timestamp_ntz": pa.timestamp("us"), "binary": pa.binary(),
}


@dataclass
class RowBatch:
    """Rows to merge and the source version to record with them.

    `version` is the last source version whose rows are all in this or an earlier batch
    (None: record nothing); `advances` says it is past the position the read started from.
    """

    rows: pa.Table | None
    version: int | None
    advances: bool


@dataclass
class ReadStats:
    commits: int = 0
    files: int = 0
    bytes_read: int = 0
    rows: int = 0
    head: int | None = None  # the source's newest version, when known
    behind: bool = False  # stopped at max_commits with more commits after


@dataclass
class CommitPlan:
    """The commits one run reads: versions (start, end], their actions."""

    start: int | None
    commits: list[tuple[int, list[dict]]] = field(default_factory=list)
    history_missing: bool = False
    empty_source: bool = False

    @property
    def end(self) -> int | None:
        return self.commits[-1][0] if self.commits else self.start


def plan_commits(store: TableStore, start: int | None, max_commits: int, stats: ReadStats) -> CommitPlan:
    """Read the commits after `start` (at most `max_commits`), stopping at the first absent one.

    A missing `start + 1` is the normal "nothing new" when `start` itself is still there
    (log cleanup removes a prefix, so versions after a present one are all present);
    otherwise the source's history has been cleaned up past `start`.
    """
    plan = CommitPlan(start=start)
    version = -1 if start is None else start
    while len(plan.commits) < max_commits:
        try:
            data = store.get_log_file(commit_name(version + 1))
        except FileNotFoundError:
            break
        where = f"{store.description} version {version + 1}"
        try:
            actions = parse_commit(data, where=where)
        except CommitIncomplete:
            break  # a writer is still writing it: the next run takes it
        # The one path check, for every commit of the run before any row is merged: a hostile
        # path is refused (InvalidCommit) and this run merges nothing of this source.
        referenced_files(actions, store_root(store), allow_external=False, where=where)
        stats.bytes_read += len(data)
        version += 1
        plan.commits.append((version, actions))
    stats.commits = len(plan.commits)
    if plan.commits:
        if len(plan.commits) == max_commits:
            stats.head = find_latest_version(store)
            stats.behind = stats.head is not None and stats.head > version
        else:
            stats.head = version
        return plan
    if start is not None and store.log_entry(commit_name(start)) is not None:
        stats.head = start
        return plan
    head = find_latest_version(store)
    stats.head = head
    if head is None:
        plan.empty_source = True
    elif start is None or head > start:
        plan.history_missing = True
    return plan


def _arrow_type(delta_type) -> pa.DataType | None:
    if isinstance(delta_type, str):
        if delta_type in _PRIMITIVES:
            return _PRIMITIVES[delta_type]
        if delta_type.startswith("decimal("):
            precision, scale = (int(x) for x in delta_type[8:-1].split(","))
            return pa.decimal128(precision, scale)
    return None


class CommitRows:
    """Turns the add actions of planned commits into row batches of at most `max_bytes`.

    Args:
        store: the source location.
        source: the configured source (its region fills `region_column`).
        region_column: the column holding each row's region.
        known_types: column types already known (the target's schema), for partition values.
        max_bytes: the ceiling on buffered rows per batch (Arrow bytes).
    """

    def __init__(self, store: TableStore, source: ConsolidationSource, *, region_column: str,
                 known_types: dict[str, pa.DataType], max_bytes: int, stats: ReadStats) -> None:
        self._store = store
        self._source = source
        self._region_column = region_column
        self._types = dict(known_types)
        self._max_bytes = max_bytes
        self._partitions: list[str] = []
        self.stats = stats

    def batches(self, plan: CommitPlan) -> Iterator[RowBatch]:
        start = plan.start
        buffer: list[pa.Table] = []
        buffered = 0
        complete = start  # the last version whose rows are all buffered or merged
        recorded = start  # the version the last yielded batch records
        root = store_root(self._store)
        for version, actions in plan.commits:
            where = f"{self._store.description} version {version}"
            removed = {table_path(a["remove"].get("path"), root, allow_external=False, where=where, what="remove")
                       for a in actions if isinstance(a.get("remove"), dict)}
            for action in actions:
                if isinstance(action.get("metaData"), dict):
                    self._metadata(action["metaData"], version)
            for action in actions:
                add = action.get("add")
                if not isinstance(add, dict) or add.get("dataChange") is False:
                    continue
                path = table_path(add.get("path"), root, allow_external=False, where=where, what="add")
                if path in removed:
                    continue  # the same file re-added with a new deletion vector: rows only went away
                for rows in self._file_rows(path, add, version):
                    buffer.append(rows)
                    buffered += rows.nbytes
                    if buffered >= self._max_bytes:
                        yield self._batch(buffer, complete, start)
                        buffer, buffered, recorded = [], 0, complete
            complete = version
            if buffered >= self._max_bytes:
                yield self._batch(buffer, complete, start)
                buffer, buffered, recorded = [], 0, complete
        if buffer or complete != recorded:
            yield self._batch(buffer, complete, start)

    def _batch(self, buffer: list[pa.Table], version: int | None, start: int | None) -> RowBatch:
        rows = pa.concat_tables(buffer, promote_options="permissive") if buffer else None
        version = None if version is None or version < 0 else version
        advances = version is not None and (start is None or version > start)
        return RowBatch(rows=rows, version=version, advances=advances)

    def _metadata(self, metadata: dict, version: int) -> None:
        mode = (metadata.get("configuration") or {}).get("delta.columnMapping.mode", "none")
        if mode != "none":
            raise ConsolidationFailed(
                f"source {self._source.name} ({self._store.description}) uses column mapping ({mode}) at version "
                f"{version}; consolidation reads physical files and does not support it. Remove the source or "
                "rewrite the table without column mapping."
            )
        self._partitions = list(metadata.get("partitionColumns") or [])
        try:
            fields = json.loads(metadata.get("schemaString") or "{}").get("fields", [])
        except json.JSONDecodeError:
            fields = []
        for f in fields:
            arrow = _arrow_type(f.get("type"))
            if arrow is not None:
                self._types[f["name"]] = arrow

    def _read(self, path: str) -> bytes:
        if "://" in path:
            raise ConsolidationFailed(
                f"source {self._source.name} references a file outside the table ({path.split('?')[0]}); "
                "shallow clones are not consolidated"
            )
        try:
            data = self._store.get_file(path)
        except FileNotFoundError as err:
            raise SourceHistoryMissing(f"source {self._source.name}: {path} is gone ({err})") from err
        self.stats.bytes_read += len(data)
        return data

    def _file_rows(self, path: str, add: dict, version: int) -> Iterator[pa.Table]:
        data = self._read(path)
        self.stats.files += 1
        deleted = None
        if isinstance(add.get("deletionVector"), dict):
            dv_file = deletion_vector_file(add["deletionVector"], store_root(self._store), allow_external=False,
                                           where=f"{self._store.description} version {version}")
            try:
                deleted = deleted_rows(add["deletionVector"], lambda _raw: self._read(dv_file))
            except (DeletionVectorError, KeyError, ValueError) as err:
                raise ConsolidationFailed(
                    f"source {self._source.name} version {version}: the deletion vector of {path} cannot be "
                    f"read ({err}); inspect the source's commit."
                ) from err
        parquet = pq.ParquetFile(io.BytesIO(data))
        offset = 0
        values = add.get("partitionValues") or {}
        for record_batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS):
            rows = pa.Table.from_batches([record_batch])
            if deleted is not None and len(deleted):
                index = np.arange(offset, offset + rows.num_rows, dtype=np.uint64)
                rows = rows.filter(pa.array(~np.isin(index, deleted)))
            offset += record_batch.num_rows
            for column in self._partitions:
                if column not in rows.column_names:
                    rows = rows.append_column(column, self._partition_array(column, values.get(column), rows.num_rows))
            if self._region_column not in rows.column_names:
                rows = rows.append_column(self._region_column,
                                          pa.array([self._source.region] * rows.num_rows, pa.string()))
            self.stats.rows += rows.num_rows
            yield rows
        del data

    def _partition_array(self, column: str, value: str | None, count: int) -> pa.Array:
        typed = self._types.get(column, pa.string())
        text = pa.array([value] * count, pa.string())
        try:
            return text.cast(typed)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return text


def snapshot_batches(store: TableStore, source: ConsolidationSource, *, start: int | None, region_column: str,
                     known_types: dict[str, pa.DataType], max_bytes: int, stats: ReadStats) -> Iterator[RowBatch]:
    """The fallback: the source's current snapshot, in batches; the last records the snapshot's version.

    The snapshot is the state at the source's newest version (its checkpoint and later commits, every
    path through the one path check), read file by file with the same reader as new commits, so
    deletion vectors are honoured.
    """
    version = find_latest_version(store)
    stats.head = version
    if version is None:
        yield RowBatch(rows=None, version=None, advances=False)
        return
    state = table_state(store, version)
    reader = CommitRows(store, source, region_column=region_column, known_types=known_types,
                        max_bytes=max_bytes, stats=stats)
    reader._metadata(state.metadata, version)
    buffer: list[pa.Table] = []
    buffered = 0
    root = store_root(store)
    for add in state.adds.values():
        path = table_path(add.get("path"), root, allow_external=False, where=f"{store.description} version {version}",
                          what="add")
        for rows in reader._file_rows(path, add, version):
            buffer.append(rows)
            buffered += rows.nbytes
            if buffered >= max_bytes:
                yield RowBatch(rows=pa.concat_tables(buffer, promote_options="permissive"), version=start,
                               advances=False)
                buffer, buffered = [], 0
    rows = pa.concat_tables(buffer, promote_options="permissive") if buffer else None
    yield RowBatch(rows=rows, version=version, advances=start is None or version > start)


def source_table_id(store: TableStore) -> str | None:
    """The source's `metaData.id` (its identity: a table dropped and re-created gets a new one); None when empty.

    One GET of commit 0 when the log still has it, else the state at the newest version.
    """
    try:
        actions = parse_commit(store.get_log_file(commit_name(0)), where=f"{store.description} version 0")
    except (FileNotFoundError, CommitIncomplete):
        actions = None
    if actions is not None:
        ids = [a["metaData"].get("id") for a in actions if isinstance(a.get("metaData"), dict)]
        if ids and isinstance(ids[-1], str):
            return ids[-1]
    version = find_latest_version(store)
    if version is None:
        return None
    identity = table_state(store, version).metadata.get("id")
    return identity if isinstance(identity, str) else None
