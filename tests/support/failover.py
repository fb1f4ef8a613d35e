"""Helpers for failover tests: a lake whose locations are named eastus/westeu/seasia, per-location
events, writes to any location, and a polling reader tolerant of lineage changes."""

from __future__ import annotations

import threading
import uuid

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from devtools.events import log_blob_events
from tests.support.lake import Lake, rows


def failover_lake(azurite, test_name: str, **kwargs) -> Lake:
    """A Lake whose source is named "eastus" and whose table name is unique (topology rows are per table)."""
    lake = Lake(azurite, test_name, **kwargs)
    table = lake.config_doc["tables"][0]
    table["name"] = "sales" + uuid.uuid4().hex[:8]
    table["source"]["name"] = "eastus"
    lake.table_name = table["name"]
    return lake


def events_of(lake: Lake, account: str, *, start_after: str | None = None) -> list[dict]:
    return log_blob_events(lake.clients[account].get_container_client(lake.container), account, lake.table_path,
                           azurite_port=lake.processes[account].port, start_after=start_after)


def deliver_new(lake: Lake, account: str, seen: set) -> list:
    """Deliver every not-yet-delivered event of `account`'s log; returns the results."""
    results = []
    for event in events_of(lake, account):
        if event["subject"] not in seen:
            seen.add(event["subject"])
            results.append(lake.deliver(event))
    return results


def write_to(lake: Lake, account: str, data: pa.Table, **kwargs) -> None:
    write_deltalake(lake.uri(), data, mode="append", storage_options=lake.options(account), **kwargs)


def version_rows(lake: Lake, account: str) -> dict[int, list]:
    head = lake.head(account)
    first = min(int(n[:20]) for n in lake.log_names(account) if n[:20].isdigit() and n.endswith(".json"))
    return {v: rows(lake.table(account, v).to_pyarrow_table()) for v in range(first, head + 1)}


class LineageReader:
    """Polls a location; every read must give, for its version, the rows of one of the expected
    lineages. A failed read is retried once at once (a reader that listed a log file just as rejoin
    removed it gets a not-found); only a failure that persists, or wrong rows, count as torn."""

    def __init__(self, lake: Lake, account: str, lineages: list[dict[int, list]]) -> None:
        self.lake, self.account, self.lineages = lake, account, lineages
        self.observations: list[int] = []
        self.retried = 0
        self.torn: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self):
        table = DeltaTable(self.lake.uri(), storage_options=self.lake.options(self.account))
        return table.version(), rows(table.to_pyarrow_table())

    def observe_once(self) -> None:
        try:
            version, seen = self._read()
        except Exception:  # noqa: BLE001 - retried once, then classified
            self.retried += 1
            try:
                version, seen = self._read()
            except Exception as err:  # noqa: BLE001
                self.torn.append(f"{type(err).__name__}: {str(err)[:300]}")
                return
        self.observations.append(version)
        if not any(lineage.get(version) == seen for lineage in self.lineages):
            self.torn.append(f"version {version} rows match no lineage")

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.lake.processes[self.account].running:
                self.observe_once()

    def __enter__(self) -> "LineageReader":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
