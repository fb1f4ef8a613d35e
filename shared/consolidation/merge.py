"""MERGE a batch of source rows into the global table with the source's txn in the same commit.

The target's `txn` for `<consolidation>/<source>` is the only progress record: the rows
and the version they bring the source to are one Delta commit, so a crash either before or
after it leaves nothing to reconcile. Rows are keyed, so a batch merged twice (a crash
between a partial batch and the next) inserts nothing the second time.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from shared import failpoints
from shared.errors import ConsolidationConflict, ConsolidationFailed

log = logging.getLogger(__name__)

MAX_COMMIT_ATTEMPTS = 8
# Every run commits to the target, and every run loads it: a checkpoint each 10 commits keeps
# that load to one checkpoint and at most 9 commits (deltalake's default is 100).
TARGET_CHECKPOINT_INTERVAL = "10"
_ROW_INDEX = "__consolidation_row"


@dataclass
class MergeResult:
    inserted: int = 0
    updated: int = 0
    committed: bool = False  # a target commit was written by this call
    skipped: bool = False  # the target already recorded this version: another run merged it
    attempts: int = 0


def latest_per_key(rows: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """One row per key, the last one (rows come in version order, so the newest wins).

    Raises:
        ConsolidationFailed: a key column is missing from the rows.
    """
    missing = [k for k in keys if k not in rows.column_names]
    if missing:
        raise ConsolidationFailed(
            f"the source rows have no column {missing} of the consolidation's keys; every source must have "
            "the key columns (the region column is added when missing)"
        )
    if rows.num_rows < 2:
        return rows
    indexed = rows.select(list(keys)).append_column(_ROW_INDEX, pa.array(np.arange(rows.num_rows)))
    last = indexed.group_by(list(keys), use_threads=False).aggregate([(_ROW_INDEX, "max")])
    keep = np.sort(last.column(f"{_ROW_INDEX}_max").to_numpy())
    return rows if len(keep) == rows.num_rows else rows.take(pa.array(keep))


def _literal(value) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if np.isfinite(value) else None
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return None


def key_ranges(rows: pa.Table, keys: tuple[str, ...]) -> str:
    """`t.k >= min AND t.k <= max` for each key of the batch: lets the MERGE skip target files by their
    statistics, so its cost follows the batch rather than the whole global table. Every source key
    lies inside its range, so no match is lost."""
    terms = []
    for key in keys:
        column = rows.column(key)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                or pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        bounds = pc.min_max(column).as_py()
        low, high = _literal(bounds["min"]), _literal(bounds["max"])
        if low is not None and high is not None:
            terms.append(f't."{key}" >= {low} AND t."{key}" <= {high}')
    return "".join(f" AND {t}" for t in terms)


class TargetTable:
    """The global table, brought up to date before every attempt (other writers move it).

    Args:
        uri, options: where deltalake finds it (options are secret).
        keys: merge keys; on_match: "ignore" or "update"; partition_by: for a new table.
    """

    def __init__(self, uri: str, options: dict[str, str], *, keys: tuple[str, ...], on_match: str,
                 partition_by: tuple[str, ...], label: str) -> None:
        self.uri = uri
        self._options = options
        self.keys = keys
        self.on_match = on_match
        self.partition_by = partition_by
        self.label = label
        self._table: DeltaTable | None = None
        self._predicate = " AND ".join(f't."{k}" = s."{k}"' for k in keys)

    def open(self) -> DeltaTable | None:
        """The target at its newest version: loaded once, then only the commits since (other writers')."""
        if self._table is not None:
            self._table.update_incremental()
            return self._table
        try:
            self._table = DeltaTable(self.uri, storage_options=self._options)
        except TableNotFoundError:
            return None
        return self._table

    def transaction_version(self, app_id: str) -> int | None:
        """The last source version recorded for `app_id`, or None (no table, or never merged)."""
        table = self.open()
        return None if table is None else table.transaction_version(app_id)

    def position(self, app_id: str) -> tuple[int | None, dict[str, pa.DataType]]:
        """The recorded version for `app_id` and the target's column types, from one read of the target."""
        table = self.open()
        if table is None:
            return None, {}
        schema = pa.schema(table.schema().to_arrow())
        return table.transaction_version(app_id), {f.name: f.type for f in schema}

    def _create(self, schema: pa.Schema) -> None:
        try:
            write_deltalake(self.uri, schema.empty_table(), mode="ignore", storage_options=self._options,
                            partition_by=list(self.partition_by) or None,
                            configuration={"delta.checkpointInterval": TARGET_CHECKPOINT_INTERVAL})
            log.info("consolidation.target_created target=%s", self.label, extra={"target": self.label})
        except CommitFailedError:
            pass  # another run created it at the same moment

    def merge(self, rows: pa.Table | None, *, app_id: str, version: int | None, advances: bool,
              identity: str | None = None) -> MergeResult:
        """Merge `rows` and record `version` for `app_id`, in one commit.

        With `identity` (the source's `metaData.id`) the same commit records `version` for
        `<app_id>@<identity>` too: the position of that incarnation of the source, so a source
        dropped and re-created is recognised and read from its version 0.

        Skips when the target already records `version` or later (and the batch advances);
        commits the txn alone when no row changes (a no-op MERGE writes no commit).

        Raises:
            ConsolidationConflict: other writers won every attempt.
            ConsolidationFailed: the rows cannot be merged (key columns, schema).
        """
        if rows is not None and rows.num_rows:
            rows = latest_per_key(rows, self.keys)
        result = MergeResult()
        delay = 0.05
        while result.attempts < MAX_COMMIT_ATTEMPTS:
            result.attempts += 1
            table = self.open()
            if table is None:
                if rows is None:
                    return result  # nothing to write and nothing to record yet
                self._create(rows.schema)
                continue
            marker = f"{app_id}@{identity}" if identity else None
            current = table.transaction_version(marker or app_id)
            if advances and version is not None and current is not None and current >= version:
                result.skipped = True
                return result
            properties = CommitProperties(app_transactions=[Transaction(app_id, version)]
                                          + ([Transaction(marker, version)] if marker else [])) \
                if version is not None else None
            try:
                changed = False
                if rows is not None and rows.num_rows:
                    failpoints.hit(failpoints.CONSOLIDATION_MERGE)
                    merger = table.merge(rows, predicate=self._predicate + key_ranges(rows, self.keys), source_alias="s", target_alias="t",
                                         merge_schema=True, commit_properties=properties)
                    if self.on_match == "update":
                        merger = merger.when_matched_update_all()
                    metrics = merger.when_not_matched_insert_all().execute()
                    failpoints.hit(failpoints.CONSOLIDATION_MERGED)  # a test reads the target here: rows and txn
                    result.inserted = int(metrics.get("num_target_rows_inserted", 0))
                    result.updated = int(metrics.get("num_target_rows_updated", 0))
                    changed = bool(metrics.get("num_target_files_added", 0) or metrics.get("num_target_files_removed", 0))
                if not changed and properties is not None and (current is None or current < version):
                    # Every row already there: a MERGE that changes nothing writes no commit and so
                    # no txn; record the position with an empty commit instead.
                    table.create_write_transaction([], mode="append", schema=table.schema(),
                                                   partition_by=table.metadata().partition_columns or None,
                                                   commit_properties=properties)
                    changed = True
                result.committed = changed
            except CommitFailedError as err:
                log.info("consolidation.commit_conflict target=%s app_id=%s attempt=%d error=%s", self.label,
                         app_id, result.attempts, str(err).splitlines()[0])
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
                continue
            except ConsolidationFailed:
                raise
            except Exception as err:  # noqa: BLE001 - deltalake raises its own types for schema problems
                if type(err).__name__ in ("SchemaMismatchError", "DeltaProtocolError") or isinstance(err, ValueError):
                    raise ConsolidationFailed(
                        f"cannot merge into {self.label}: {type(err).__name__}: {str(err).splitlines()[0]}; "
                        "check the sources' schemas and the keys"
                    ) from err
                raise
            if result.committed:
                failpoints.hit(failpoints.CONSOLIDATION_COMMITTED)
            return result
        raise ConsolidationConflict(
            f"{self.label}: other writers committed first {MAX_COMMIT_ATTEMPTS} times while merging {app_id}; "
            "the next run retries from the recorded version"
        )
