"""A test lake: a primary table written by deltalake and replicas, all on real Azurite."""

from __future__ import annotations

import json
import re
import uuid

import pyarrow as pa
from azure.storage.blob import BlobServiceClient
from deltalake import DeltaTable, write_deltalake

from devtools.azurite import AzuriteProcess
from devtools.events import log_blob_events
from shared.config.parse import parse_config
from shared.app.commit_event import EventResult, handle_storage_event
from shared.runtime import ReplicationRuntime

TABLE_PATH = "delta/sales"


def rows(table: pa.Table) -> list[tuple]:
    """Rows of a table as sorted tuples: order-insensitive comparison of contents."""
    cols = sorted(table.column_names)
    data = table.select(cols).to_pylist()
    return sorted((tuple(repr(r[c]) for c in cols) for r in data))


class Lake:
    """Source table in eastus; replicas westeu and seasia (optionally in another Azurite)."""

    def __init__(self, azurite: AzuriteProcess, test_name: str, *, replica_process: AzuriteProcess | None = None,
                 primary_process: AzuriteProcess | None = None, table_overrides: dict | None = None) -> None:
        self.azurite = primary_process or azurite
        self.replica_process = replica_process or azurite
        slug = re.sub(r"[^a-z0-9]", "", test_name.lower())[:20] or "t"
        self.container = f"{slug}-{uuid.uuid4().hex[:10]}"
        self.table_path = TABLE_PATH
        self.processes = {"eastus": self.azurite, "westeu": azurite, "seasia": self.replica_process}
        self.environ = {
            "AzureWebJobsStorage": azurite.connection_string("devstoreaccount1"),
            "EASTUS_STORAGE": self.azurite.connection_string("eastus"),
            "WESTEU_STORAGE": azurite.connection_string("westeu"),
            "SEASIA_STORAGE": self.replica_process.connection_string("seasia"),
        }
        self.status_table = "Status" + uuid.uuid4().hex[:12]
        self.clients = {a: BlobServiceClient.from_connection_string(self.environ[f"{a.upper()}_STORAGE"])
                        for a in ("eastus", "westeu", "seasia")}
        self.clients["eastus"].create_container(self.container)
        table = {
            "name": "sales",
            "source": {"connection": "EASTUS_STORAGE", "container": self.container, "path": TABLE_PATH},
            "replicas": [
                {"name": "westeu", "connection": "WESTEU_STORAGE", "container": self.container, "path": TABLE_PATH},
                {"name": "seasia", "connection": "SEASIA_STORAGE", "container": self.container, "path": TABLE_PATH},
            ],
        }
        table.update(table_overrides or {})
        self.config_doc = {"tables": [table]}
        self._runtime: ReplicationRuntime | None = None

    # -- replication ------------------------------------------------------------------
    @property
    def runtime(self) -> ReplicationRuntime:
        if self._runtime is None:
            self._runtime = ReplicationRuntime(parse_config(self.config_doc), self.environ)
        return self._runtime

    def events(self, *, start_after: str | None = None) -> list[dict]:
        return log_blob_events(self.clients["eastus"].get_container_client(self.container), "eastus",
                               self.table_path, azurite_port=self.azurite.port, start_after=start_after)

    def deliver(self, event: dict) -> EventResult:
        return handle_storage_event(self.runtime, event)

    def deliver_all(self, events: list[dict]) -> list[EventResult]:
        return [self.deliver(e) for e in events]

    # -- the table --------------------------------------------------------------------
    def uri(self) -> str:
        return f"az://{self.container}/{self.table_path}"

    def options(self, account: str) -> dict:
        return self.processes[account].storage_options(account)

    def write(self, data: pa.Table, *, mode: str = "append", **kwargs) -> None:
        write_deltalake(self.uri(), data, mode=mode, storage_options=self.options("eastus"), **kwargs)

    def table(self, account: str = "eastus", version: int | None = None) -> DeltaTable:
        return DeltaTable(self.uri(), version=version, storage_options=self.options(account))

    def log_names(self, account: str) -> list[str]:
        prefix = f"{self.table_path}/_delta_log/"
        cc = self.clients[account].get_container_client(self.container)
        if not cc.exists():
            return []
        return sorted(b.name[len(prefix):] for b in cc.list_blobs(name_starts_with=prefix))

    def blob_bytes(self, account: str, name: str) -> bytes:
        return self.clients[account].get_blob_client(self.container, f"{self.table_path}/{name}").download_blob().readall()

    def blobs(self, account: str) -> dict[str, tuple[int, str]]:
        """Every blob of the container in an account: name -> (size, etag)."""
        cc = self.clients[account].get_container_client(self.container)
        if not cc.exists():
            return {}
        return {b.name: (b.size, b.etag) for b in cc.list_blobs()}

    def head(self, account: str) -> int | None:
        versions = [int(n[:20]) for n in self.log_names(account) if re.fullmatch(r"\d{20}\.json", n)]
        return max(versions) if versions else None

    def assert_replicas_equal(self, *, accounts=("westeu", "seasia"), every_version: bool = True) -> None:
        head = self.head("eastus")
        primary_log = [n for n in self.log_names("eastus") if re.fullmatch(r"\d{20}\.json", n)]
        for account in accounts:
            assert self.head(account) == head, f"{account} head {self.head(account)} != primary {head}"
            for name in primary_log:
                if name in self.log_names(account):
                    assert self.blob_bytes(account, f"_delta_log/{name}") == self.blob_bytes("eastus", f"_delta_log/{name}")
            first = min(int(n[:20]) for n in primary_log)
            versions = range(first, head + 1) if every_version else [head]
            for v in versions:
                assert rows(self.table(account, v).to_pyarrow_table()) == rows(self.table("eastus", v).to_pyarrow_table()), \
                    f"{account} differs from the primary at version {v}"

    def close_runtime(self) -> None:
        """Close the runtime; the next use of `runtime` builds one from the settings as they are then."""
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None

    def close(self) -> None:
        self.close_runtime()
        for account, client in self.clients.items():
            if not self.processes[account].running:
                continue
            try:
                client.delete_container(self.container)
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass
            client.close()


def commit_actions(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


PARTITIONS = ["us east", "50% off", "a=b", "münchen", "東京 tokyo"]


def batch(start: int, count: int) -> pa.Table:
    ids = list(range(start, start + count))
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "region": pa.array([PARTITIONS[i % len(PARTITIONS)] for i in ids]),
        "amount": pa.array([float(i) * 1.5 for i in ids]),
    })


def build_rich_table(lake: Lake, *, appends: int = 14) -> None:
    """A primary with >= 22 commits: appends, delete, update, merge, compaction,
    checkpoints, change data files, partition values with spaces, %, = and unicode."""
    lake.write(batch(0, 10), mode="overwrite", partition_by=["region"],
               configuration={"delta.enableChangeDataFeed": "true"})
    for i in range(1, appends // 2):
        lake.write(batch(i * 10, 10), partition_by=["region"])
    lake.table().delete("id % 7 = 0")
    lake.table().update(updates={"amount": "amount + 100"}, predicate="region = 'a=b'")
    lake.table().create_checkpoint()
    source = batch(5, 20)
    (lake.table().merge(source, predicate="t.id = s.id", source_alias="s", target_alias="t")
        .when_matched_update_all().when_not_matched_insert_all().execute())
    for i in range(appends // 2, appends):
        lake.write(batch(i * 10, 10), partition_by=["region"])
    lake.table().optimize.compact()
    lake.table().delete("region = '50% off' AND id < 30")
    lake.table().create_checkpoint()
    lake.write(batch(1000, 5), partition_by=["region"])
    lake.write(batch(2000, 5), partition_by=["region"])
