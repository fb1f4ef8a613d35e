"""The ReplicationTopology Azure Table: which location of a table takes writes, and since which epoch.

PartitionKey = table name, one row (RowKey "topology") with Primary, Epoch, PromotedAtVersion,
PromotedAt and PreviousPrimary: the current primary. Beside it, one row per promotion ever made
(RowKey "epoch-<E>", the same columns): the history rejoin needs to find where a location left the
primary's lineage after any number of failovers. A flip writes both in one entity-group
transaction: the current row only under an ETag condition (created the first time), the history
row only if absent, so of two operators promoting at once exactly one wins and the history never
misses an epoch. It lives in the function app's storage, next to ReplicationStatus. Every write to
a replica is preceded by a point read of it (the write fence); routing may use the last such read
of this process (shared/replication/fence.py, RememberedTopologies); a write never does.

Without a row the configured source is the primary at epoch 0, but only while nothing says a
promotion happened: when the ReplicationTopology *table* is missing (host storage replaced or the
table deleted), the promotion markers in the data locations decide (see markers.py) and a missing
table after a promotion is `TopologyUnavailable`, never epoch 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableServiceClient, TableTransactionError, UpdateMode

from shared.config.model import TableConfig
from shared.errors import TopologyConflict, TopologyUnavailable
from shared.storage.host_table import HostTable
from shared.storage.table_row import ABSENT, NOT_ANSWERED

log = logging.getLogger(__name__)

TOPOLOGY_TABLE = "ReplicationTopology"
ROW_KEY = "topology"
HISTORY_PREFIX = "epoch-"  # RowKey of one promotion's history row: epoch-<E>
REJOIN_PREFIX = "rejoined-"  # RowKey of a location's last rejoin: rejoined-<location>, column Epoch


def history_row_key(epoch: int) -> str:
    return f"{HISTORY_PREFIX}{epoch}"


@dataclass(frozen=True)
class Topology:
    """A table's primary at one epoch. `etag` is None when no row exists yet (epoch 0)."""

    table: str
    primary: str
    epoch: int = 0
    promoted_at_version: int | None = None
    promoted_at: str | None = None
    previous_primary: str | None = None
    etag: str | None = None

    def as_json(self) -> dict:
        return {"table": self.table, "primary": self.primary, "epoch": self.epoch,
                "promotedAtVersion": self.promoted_at_version, "promotedAt": self.promoted_at,
                "previousPrimary": self.previous_primary}


def default_topology(table: TableConfig) -> Topology:
    """What holds before any promote: the configured source, epoch 0."""
    return Topology(table.name, table.source.name)


class TopologyStore(HostTable):
    """Rows of the ReplicationTopology table.

    Args:
        service: a TableServiceClient for the function app's storage (STATUS_CONNECTION).
        markers: decides, when the table itself is missing, whether a promotion ever happened
            (`shared.failover.markers.PromotionMarkers`); None: a missing table is epoch 0.
    """

    def __init__(self, service: TableServiceClient, *, table_name: str = TOPOLOGY_TABLE, markers=None,
                 rows=None) -> None:
        super().__init__(service, table_name)
        self._markers = markers
        # The hot path's point read (the write fence's, before every commit write), without the SDK's
        # pipeline (shared/storage/table_row.py): `rows(table_client)`. None: every read through the SDK.
        self._rows = rows(self._table) if rows is not None else None

    def get(self, table: TableConfig) -> Topology:
        """The table's current topology (one point read); the configured default without a row.

        Raises:
            ReplicaUnreachable: the table service did not answer (retryable: replicating with
                a guessed primary could copy from a fenced location).
            TopologyUnavailable: the ReplicationTopology table is missing and a promotion
                marker says the table was promoted (or a location that could hold one does not
                answer): epoch 0 would name a deposed primary.
        """
        if self._rows is not None:
            found = self._rows.get(table.name, ROW_KEY)
            if found is ABSENT:
                return default_topology(table)
            if found is not NOT_ANSWERED and "Primary" in found[0]:
                columns, etag = found
                return _from_columns(table.name, columns, etag)
        try:
            with self._errors(f"reading the topology of table {table.name}"):
                entity = self._table.get_entity(table.name, ROW_KEY)
        except ResourceNotFoundError as err:
            if err.error_code == "TableNotFound" and self._markers is not None:
                return self._missing_table(table)
            return default_topology(table)
        return _from_entity(table.name, entity)

    def current_of_group(self, group: str) -> dict[str, Topology] | None:
        """Every current row of a group's tables (names `<group>:...`) in one range query: a lag check
        over many idle tables reads them at once instead of one point read each. A table without a row
        is not in it (epoch 0). None when the ReplicationTopology table is missing (the caller reads
        per table, where the promotion markers decide)."""
        try:
            with self._errors(f"reading the topology of group {group}"):
                entities = list(self._table.query_entities(
                    "PartitionKey ge @lo and PartitionKey lt @hi and RowKey eq @row",
                    parameters={"lo": f"{group}:", "hi": f"{group};", "row": ROW_KEY}))
        except ResourceNotFoundError:
            return None
        return {e["PartitionKey"]: _from_entity(e["PartitionKey"], e) for e in entities}

    def _missing_table(self, table: TableConfig) -> Topology:
        """No ReplicationTopology table at all: epoch 0 only if no location holds a promotion marker.

        Once every location answered without one, the (empty) table is created, so the next
        reads are one point read again; a host storage replaced later is checked again.
        """
        found = self._markers.latest(table)
        if found.marker is not None:
            raise TopologyUnavailable(
                f"topology of table {table.name}: the {self.table_name} table is missing from the function app's "
                f"storage, but location {found.location} holds a promotion marker (epoch {found.marker['epoch']}, "
                f"primary {found.marker['primary']}); the table was promoted, so epoch 0 (the configured source) "
                "would fence the real primary. Restore the topology with `python -m cli topology restore --table "
                f"{table.name}` (it rebuilds the rows from the markers). Nothing was replicated."
            )
        if found.unreachable:
            raise TopologyUnavailable(
                f"topology of table {table.name}: the {self.table_name} table is missing from the function app's "
                f"storage and location(s) {', '.join(found.unreachable)} did not answer, so whether the table was "
                "ever promoted cannot be told; it will be retried. Nothing was replicated."
            )
        self._ensure_table()
        log.warning("topology.table_created table=%s reason=missing_and_no_promotion_marker", table.name,
                    extra={"table": table.name})
        return default_topology(table)

    def history(self, table: TableConfig) -> list[Topology]:
        """Every promotion of the table, by epoch (empty when never promoted).

        A current row written before history rows existed (an older version of this app) is
        its own epoch's history; earlier epochs of such a table are unknown.

        Raises:
            ReplicaUnreachable: the table service did not answer.
            TopologyUnavailable: see `get`.
        """
        return self.lineage_of(table, self.get(table))[0]

    def lineage_of(self, table: TableConfig, current: Topology) -> tuple[list[Topology], dict[str, int]]:
        """(history, rejoins) for the current row already read: every promotion by epoch, and the
        epoch at which each location last rejoined (`record_rejoin`); one query, none when never promoted."""
        if current.etag is None:
            return [], {}
        with self._errors(f"reading the topology history of table {table.name}"):
            entities = list(self._table.query_entities("PartitionKey eq @pk", parameters={"pk": table.name}))
        return _lineage(table, current, entities)

    def read_all(self, table: TableConfig) -> tuple[Topology, list[Topology], dict[str, int]]:
        """(current, history, rejoins) in one query of the table's partition: what a reader needs on
        every resolution, in the one request a point read of the current row would have cost."""
        try:
            with self._errors(f"reading the topology of table {table.name}"):
                entities = list(self._table.query_entities("PartitionKey eq @pk", parameters={"pk": table.name}))
        except ResourceNotFoundError as err:
            if err.error_code == "TableNotFound" and self._markers is not None:
                return self._missing_table(table), [], {}
            return default_topology(table), [], {}
        row = next((e for e in entities if e["RowKey"] == ROW_KEY), None)
        if row is None:
            return default_topology(table), [], {}
        current = _from_entity(table.name, row)
        return (current, *_lineage(table, current, entities))

    def record_rejoin(self, table: TableConfig, location: str, epoch: int) -> None:
        """Record that `location` follows the primary's lineage since `epoch` (a finished rejoin).

        The evidence the fence and the resolver need for a former primary whose log ends exactly at
        its promotion version: from the log alone it looks like a deposed primary nobody fenced.
        Upsert: rejoin is idempotent and always runs at the current (highest) epoch.
        """
        # A failure raises (the location was rejoined; rerunning rejoin records it).
        with self._errors(f"recording the rejoin of {location} (table {table.name})"):
            self._table.upsert_entity({"PartitionKey": table.name, "RowKey": f"{REJOIN_PREFIX}{location}",
                                       "Epoch": epoch, "RejoinedAt": datetime.now(timezone.utc).isoformat()},
                                      mode=UpdateMode.REPLACE)

    def flip(self, current: Topology, primary: str, promoted_at_version: int) -> Topology:
        """Make `primary` the table's primary at epoch `current.epoch + 1`, only if the row is
        still `current` (its ETag; created when `current` came from no row), and record the
        promotion as history row `epoch-<E>`: both or neither (one transaction).

        Raises:
            TopologyConflict: another promote changed the row since `current` was read;
                nothing was written.
        """
        now = datetime.now(timezone.utc).isoformat()
        epoch = current.epoch + 1
        columns = {"Primary": primary, "Epoch": epoch, "PromotedAtVersion": promoted_at_version, "PromotedAt": now,
                   "PreviousPrimary": current.primary}
        entity = {"PartitionKey": current.table, "RowKey": ROW_KEY, **columns}
        history = {"PartitionKey": current.table, "RowKey": history_row_key(epoch), **columns}
        if current.etag is None:
            self._ensure_table()
            operations = [("create", entity), ("create", history)]
        else:
            operations = [("update", entity, {"mode": UpdateMode.REPLACE, "etag": current.etag,
                                              "match_condition": MatchConditions.IfNotModified}),
                          ("create", history)]
        try:
            with self._errors(f"promoting table {current.table} to {primary}"):
                try:
                    results = self._table.submit_transaction(operations)
                except TableTransactionError as err:
                    if err.status_code in (404, 409, 412) or \
                            err.error_code in ("EntityAlreadyExists", "UpdateConditionNotSatisfied"):
                        raise ResourceModifiedError(str(err)) from err
                    raise
        except (ResourceExistsError, ResourceModifiedError) as err:
            raise TopologyConflict(self._conflict(current, primary)) from err
        log.warning("topology.flipped table=%s primary=%s previous=%s epoch=%d promoted_at_version=%d",
                    current.table, primary, current.primary, epoch, promoted_at_version,
                    extra={"table": current.table, "primary": primary, "epoch": epoch})
        return Topology(current.table, primary, epoch, promoted_at_version, now, current.primary,
                        results[0].get("etag"))

    def restore(self, table: TableConfig, rows: list[Topology]) -> Topology:
        """Recreate the current row and the history rows from promotion markers (`rows`, by epoch);
        only into a table that has no current row (never over a live topology).

        Raises:
            TopologyConflict: the table has a current row already; nothing was written.
        """
        self._ensure_table()
        last = rows[-1]
        operations = [("create", {"PartitionKey": table.name, "RowKey": ROW_KEY, **_columns(last)})]
        operations += [("upsert", {"PartitionKey": table.name, "RowKey": history_row_key(r.epoch), **_columns(r)})
                       for r in rows]
        try:
            results = self._table.submit_transaction(operations)
        except TableTransactionError as err:
            raise TopologyConflict(f"topology of table {table.name} already has a current row; restore writes only "
                                   "into a missing topology. Nothing was changed.") from err
        return Topology(table.name, last.primary, last.epoch, last.promoted_at_version, last.promoted_at,
                        last.previous_primary, results[0].get("etag"))

    def _conflict(self, current: Topology, primary: str) -> str:
        return (f"promotion of table {current.table} to {primary} lost a race: the topology changed after it "
                f"was read at epoch {current.epoch} (primary {current.primary}); another promote won. Nothing "
                "was changed by this one. Check `python -m cli promote --help` and the current primary "
                "(`python -m cli status`), then promote again only if still needed.")


def _lineage(table: TableConfig, current: Topology, entities) -> tuple[list[Topology], dict[str, int]]:
    """History rows (`epoch-<E>`, plus the current row's own epoch) and rejoin rows of a partition."""
    rows: dict[int, Topology] = {}
    rejoins: dict[str, int] = {}
    for entity in entities:
        key = str(entity["RowKey"])
        if key.startswith(HISTORY_PREFIX):
            row = _from_entity(table.name, entity)
            rows[row.epoch] = row
        elif key.startswith(REJOIN_PREFIX):
            rejoins[key[len(REJOIN_PREFIX):]] = int(entity.get("Epoch", 0))
    rows.setdefault(current.epoch, current)
    return [rows[e] for e in sorted(rows) if e >= 1], rejoins


def _columns(t: Topology) -> dict:
    return {"Primary": t.primary, "Epoch": t.epoch, "PromotedAtVersion": t.promoted_at_version,
            "PromotedAt": t.promoted_at or "", "PreviousPrimary": t.previous_primary or ""}


def _from_entity(table_name: str, entity) -> Topology:
    return _from_columns(table_name, entity, entity.metadata.get("etag"))


def _number(value) -> int | None:
    """A column's integer: a 64-bit number comes as an EntityProperty from the SDK, as a string from a
    read without type metadata (table_row.py)."""
    value = getattr(value, "value", value)
    return None if value is None else int(value)


def _from_columns(table_name: str, columns, etag: str | None) -> Topology:
    version = _number(columns.get("PromotedAtVersion"))
    return Topology(
        table=table_name, primary=columns["Primary"], epoch=_number(columns.get("Epoch", 0)),
        promoted_at_version=None if version is None or version == -1 else version,
        promoted_at=columns.get("PromotedAt") or None, previous_primary=columns.get("PreviousPrimary") or None,
        etag=etag,
    )
