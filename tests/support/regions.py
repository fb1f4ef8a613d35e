"""Regional tables in eastus, westeu and seasia, consolidated into a global table, all on real Azurite."""

from __future__ import annotations

import re
import uuid

import pyarrow as pa
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from deltalake import DeltaTable, write_deltalake

from devtools.azurite import AzuriteProcess
from shared.config.parse import parse_config
from shared.consolidation.run import run_consolidation
from shared.consolidation.state import ConsolidationStatusStore
from shared.runtime import ReplicationRuntime

REGIONS = ("eastus", "westeu", "seasia")
GLOBAL = "global"


def orders(region: str, ids, *, amount: float = 1.0) -> pa.Table:
    """Orders with transaction ids `ids` written in `region` (no region column: the consolidation adds it)."""
    ids = list(ids)
    return pa.table({
        "transaction_id": pa.array(ids, pa.int64()),
        "amount": pa.array([amount * i for i in ids], pa.float64()),
        "day": pa.array([f"d{i % 3}" for i in ids], pa.string()),
    })


class Regions:
    """Three regional tables (one per account) and a global target, in unique containers."""

    def __init__(self, azurite: AzuriteProcess, test_name: str, *, processes: dict | None = None,
                 overrides: dict | None = None, sources: list | None = None) -> None:
        self.azurite = azurite
        self.processes = {a: azurite for a in (*REGIONS, GLOBAL)}
        self.processes.update(processes or {})
        slug = re.sub(r"[^a-z0-9]", "", test_name.lower())[:20] or "t"
        suffix = uuid.uuid4().hex[:10]
        self.container = f"{slug}-{suffix}"
        self.name = f"c-{slug}-{suffix}"  # consolidation names are unique per test: leases are shared
        self.environ = {"AzureWebJobsStorage": azurite.connection_string("devstoreaccount1")}
        for account, proc in self.processes.items():
            self.environ[f"{account.upper()}_STORAGE"] = proc.connection_string(account)
        self.clients = {a: BlobServiceClient.from_connection_string(self.environ[f"{a.upper()}_STORAGE"])
                        for a in self.processes}
        for account in REGIONS:
            self.clients[account].create_container(self.container)
        consolidation = {
            "name": self.name,
            "sources": sources or [
                {"connection": f"{r.upper()}_STORAGE", "container": self.container, "path": "orders", "region": r}
                for r in REGIONS
            ],
            "target": {"connection": "GLOBAL_STORAGE", "container": self.container, "path": "orders_global",
                       "region": GLOBAL},
            "keys": ["transaction_id", "source_region"],
        }
        consolidation.update(overrides or {})
        self.config_doc = {"consolidations": [consolidation]}
        self.status_table = "Cons" + uuid.uuid4().hex[:12]
        self.service = TableServiceClient.from_connection_string(azurite.connection_string("devstoreaccount1"))
        self.status = ConsolidationStatusStore(self.service, table_name=self.status_table)
        self._runtime: ReplicationRuntime | None = None

    @property
    def runtime(self) -> ReplicationRuntime:
        if self._runtime is None:
            self._runtime = ReplicationRuntime(parse_config(self.config_doc), self.environ)
        return self._runtime

    @property
    def consolidation(self):
        return self.runtime.config.consolidations[0]

    def run(self, *, alerts=None, progress=None):
        outcomes = run_consolidation(self.runtime, self.consolidation, self.status, alerts, progress=progress)
        return {o.source: o for o in outcomes}

    # -- regional tables ----------------------------------------------------------------
    def uri(self, path: str = "orders") -> str:
        return f"az://{self.container}/{path}"

    def options(self, account: str) -> dict:
        return self.processes[account].storage_options(account)

    def write(self, region: str, data: pa.Table, *, mode: str = "append", **kwargs) -> None:
        write_deltalake(self.uri(), data, mode=mode, storage_options=self.options(region), **kwargs)

    def table(self, region: str) -> DeltaTable:
        return DeltaTable(self.uri(), storage_options=self.options(region))

    # -- the global table -----------------------------------------------------------------
    def target(self) -> DeltaTable:
        return DeltaTable(self.uri("orders_global"), storage_options=self.options(GLOBAL))

    def target_version(self) -> int:
        return self.target().version()

    def global_rows(self) -> list[dict]:
        return sorted(self.target().to_pyarrow_table().to_pylist(),
                      key=lambda r: (r["source_region"], r["transaction_id"]))

    def global_keys(self) -> list[tuple]:
        return [(r["source_region"], r["transaction_id"]) for r in self.global_rows()]

    def txn(self, source: str) -> int | None:
        return self.target().transaction_version(f"{self.name}/{source}")

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.close()
        try:
            self.service.delete_table(self.status_table)
        except Exception:  # noqa: BLE001 - best-effort cleanup
            pass
        for account, client in self.clients.items():
            if self.processes[account].running:
                try:
                    client.delete_container(self.container)
                except Exception:  # noqa: BLE001 - best-effort cleanup
                    pass
            client.close()
