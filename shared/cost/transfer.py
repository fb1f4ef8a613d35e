"""The daily replicated-bytes record: the ReplicationTransfer Azure Table.

One row per table, replica and UTC day, in the function app's own storage (next to
ReplicationStatus), so the figure survives restarts: PartitionKey = table name,
RowKey = `<yyyy-mm-dd>|<replica>`; columns Replica, Day, Bytes (data files), LogBytes
(checkpoints, sidecars, .crc), Files, UpdatedAt. Increments are ETag-conditional merges,
retried on a concurrent change, so concurrent invocations never lose each other's bytes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import EdmType, EntityProperty, TableServiceClient, UpdateMode

from shared.storage.host_table import HostTable

log = logging.getLogger(__name__)

TRANSFER_TABLE = "ReplicationTransfer"
MAX_ATTEMPTS = 20
# How long replicated bytes wait in memory before they are written (see TransferRecorder).
FLUSH_SECONDS = 5.0


@dataclass(frozen=True)
class TransferDay:
    table: str
    replica: str
    day: str
    bytes: int
    log_bytes: int
    files: int

    @property
    def total_bytes(self) -> int:
        return self.bytes + self.log_bytes


def _int64(value: int) -> EntityProperty:
    return EntityProperty(int(value), EdmType.INT64)


def _day(now: datetime | None) -> str:
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc).date().isoformat()


class TransferStore(HostTable):
    """Rows of the ReplicationTransfer table.

    Args:
        service: a TableServiceClient for the function app's storage (STATUS_CONNECTION).
    """

    def __init__(self, service: TableServiceClient, *, table_name: str = TRANSFER_TABLE) -> None:
        super().__init__(service, table_name)

    def add(self, table: str, replica: str, *, nbytes: int, log_bytes: int = 0, files: int = 0,
            now: datetime | None = None, day: str | None = None) -> None:
        """Add to today's (UTC) row for one table and replica; exact under concurrent adds.

        Raises:
            azure.core.exceptions.HttpResponseError: the table service failed or kept
                changing under us for MAX_ATTEMPTS tries.
        """
        if nbytes < 0 or log_bytes < 0 or files < 0:
            raise ValueError("replicated bytes and files are never negative")
        self._ensure_table()
        day = day or _day(now)
        key = f"{day}|{replica}"
        stamp = datetime.now(timezone.utc).isoformat()
        for attempt in range(MAX_ATTEMPTS):
            try:
                entity = self._table.get_entity(table, key)
            except ResourceNotFoundError:
                try:
                    self._table.create_entity({
                        "PartitionKey": table, "RowKey": key, "Replica": replica, "Day": day,
                        "Bytes": _int64(nbytes), "LogBytes": _int64(log_bytes), "Files": _int64(files),
                        "UpdatedAt": stamp,
                    })
                    return
                except ResourceExistsError:
                    continue  # another invocation created it first: add to theirs
            try:
                self._table.update_entity({
                    "PartitionKey": table, "RowKey": key,
                    "Bytes": _int64(_value(entity.get("Bytes")) + nbytes),
                    "LogBytes": _int64(_value(entity.get("LogBytes")) + log_bytes),
                    "Files": _int64(_value(entity.get("Files")) + files),
                    "UpdatedAt": stamp,
                }, mode=UpdateMode.MERGE, etag=entity.metadata["etag"], match_condition=MatchConditions.IfNotModified)
                return
            except (ResourceModifiedError, ResourceNotFoundError):
                time.sleep(min(0.01 * (attempt + 1), 0.2))  # lost the race: read the new total, add again
        raise ResourceModifiedError(f"ReplicationTransfer row {table}/{key} kept changing; gave up after "
                                    f"{MAX_ATTEMPTS} attempts")

    def list_days(self, table: str, *, days: int = 30, now: datetime | None = None) -> list[TransferDay]:
        """One table's rows for the last `days` UTC days including today; empty when none."""
        first = (date.fromisoformat(_day(now)) - timedelta(days=days - 1)).isoformat()
        try:
            entities = list(self._table.query_entities(
                "PartitionKey eq @pk and RowKey ge @first", parameters={"pk": table, "first": first}))
        except ResourceNotFoundError:
            return []
        return sorted((TransferDay(table=e["PartitionKey"], replica=e.get("Replica", ""), day=e.get("Day", ""),
                                   bytes=_value(e.get("Bytes")), log_bytes=_value(e.get("LogBytes")),
                                   files=_value(e.get("Files"))) for e in entities),
                      key=lambda d: (d.day, d.replica))


def _value(prop) -> int:
    if prop is None:
        return 0
    return int(prop.value if isinstance(prop, EntityProperty) else prop)


class TransferRecorder:
    """Replicated bytes, added up in memory and written to the ReplicationTransfer rows in
    batches: at most every `flush_seconds` per row (a background thread), and at close.

    Per commit the record would cost two Table requests (read, conditional merge), as many
    as the commit's own copy; batched it costs two per row per interval whatever the rate.
    The price: a host that dies loses at most the last interval's bytes from the cost report,
    never anything of replication (atexit does not run when a worker is killed). The CLI
    writes at its runtime's close. `flush_seconds=0` writes at once.

    Args:
        store: builds the TransferStore on first use; may raise (no STATUS_CONNECTION).
    """

    def __init__(self, store: Callable[[], TransferStore | None], *, flush_seconds: float = FLUSH_SECONDS) -> None:
        self._store_factory = store
        self._store: TransferStore | None = None
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, str], list[int]] = {}  # (table, replica, day) -> bytes, log, files
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, table: str, outcomes: Iterable, *, now: datetime | None = None) -> None:
        """Count what these outcomes copied since last counted (outcome.transfer_recorded)."""
        day = _day(now)
        added = False
        with self._lock:
            for o in outcomes:
                delta = (o.bytes - o.transfer_recorded[0], o.log_bytes - o.transfer_recorded[1],
                         o.files - o.transfer_recorded[2])
                o.transfer_recorded = (o.bytes, o.log_bytes, o.files)
                if delta[0] or delta[1]:
                    row = self._pending.setdefault((table, o.replica, day), [0, 0, 0])
                    for i in range(3):
                        row[i] += delta[i]
                    added = True
            if added and self.flush_seconds > 0 and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="transfer-flush", daemon=True)
                self._thread.start()
        if added and self.flush_seconds <= 0:
            self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        """Write what is pending now. Never raises: a failure is one WARNING per row and those
        bytes are dropped (retrying into a dead table service would only grow memory)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        store = self._resolve_store(next(iter(pending))[0])
        if store is None:
            return
        for (table, replica, day), (nbytes, log_bytes, files) in pending.items():
            try:
                store.add(table, replica, nbytes=nbytes, log_bytes=log_bytes, files=files, day=day)
            except Exception as err:  # noqa: BLE001 - never fail replication for the cost record
                log.warning("transfer.not_recorded table=%s replica=%s bytes=%d error=%s", table, replica,
                            nbytes + log_bytes, type(err).__name__, extra={"table": table, "replica": replica})

    def _resolve_store(self, table: str) -> TransferStore | None:
        if self._store is None:
            try:
                self._store = self._store_factory()
            except Exception as err:  # noqa: BLE001 - e.g. no STATUS_CONNECTION: report, never fail replication
                log.warning("transfer.not_recorded table=%s error=%s", table, type(err).__name__,
                            extra={"table": table})
                return None
        return self._store

    def close(self) -> None:
        """Stop the background flushes and write what is pending."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()


def record_replicated_bytes(runtime, table: str, outcomes: Iterable, *, now: datetime | None = None) -> None:
    """Add what replication copied (outcome.bytes and .log_bytes, beyond what was counted
    already) to today's transfer rows, through the runtime's recorder (batched).

    Never raises: the record is for cost reports, and replication must not fail because of it
    (a failure is one WARNING line; the bytes of that batch are then missing from the report).
    """
    runtime.transfer_recorder().add(table, outcomes, now=now)
