"""The world the randomized failover checker drives: one table in eastus/westeu/seasia on the
session's Azurite, a function app whose every connection goes through a cuttable proxy, writers
that reach every location directly, and one operation per step.

The system under test (replication, timers, promote, rejoin, replay, the resolver) only ever sees
storage through `PartitionProxy`s, so a location can be partitioned from the function app and the
operator while writers in that region keep committing to it, and the function app's own table
storage (topology, leases, status) can be cut too. The checker's own view (`truth`) is direct.
"""

from __future__ import annotations

import sys
import threading
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from deltalake import CommitProperties, DeltaTable, write_deltalake

from devtools.azurite import DEVSTORE_ACCOUNT, DEVSTORE_KEY, account_key
from devtools.events import blob_created_event
from shared import failpoints
from shared.config.parse import parse_config
from shared.failover.topology import TopologyStore
from shared.runtime import ReplicationRuntime
from tests.support.partition_proxy import PartitionProxy

LOCATIONS = ("eastus", "westeu", "seasia")
TABLE_PATH = "delta/sales"
SNAPSHOT_PATH = "snapshots/sales"
QUARANTINE_PREFIX = f"_quarantine/{TABLE_PATH}/"
HOST = "host"


class Proxies:
    """One proxy per data account and for the host's blob and table endpoints (session-wide)."""

    def __init__(self, azurite) -> None:
        self.azurite = azurite
        self.blob = {a: PartitionProxy(azurite.port) for a in LOCATIONS}
        self.host_blob = PartitionProxy(azurite.port)
        self.host_table = PartitionProxy(azurite.table_port)

    def environ(self) -> dict[str, str]:
        env = {}
        for a, proxy in self.blob.items():
            env[f"{a.upper()}_STORAGE"] = (f"DefaultEndpointsProtocol=http;AccountName={a};AccountKey={account_key(a)};"
                                           f"BlobEndpoint=http://127.0.0.1:{proxy.port}/{a};")
        env["AzureWebJobsStorage"] = (
            f"DefaultEndpointsProtocol=http;AccountName={DEVSTORE_ACCOUNT};AccountKey={DEVSTORE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.host_blob.port}/{DEVSTORE_ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{self.host_table.port}/{DEVSTORE_ACCOUNT};")
        return env

    def cut(self, what: str) -> None:
        for p in self._of(what):
            p.cut()

    def heal(self, what: str) -> None:
        for p in self._of(what):
            p.heal()

    def is_cut(self, what: str) -> bool:
        return self._of(what)[0].is_cut

    def _of(self, what: str) -> list[PartitionProxy]:
        return [self.host_blob, self.host_table] if what == HOST else [self.blob[what]]

    def heal_all(self) -> None:
        for what in (*LOCATIONS, HOST):
            self.heal(what)

    def close(self) -> None:
        for p in (*self.blob.values(), self.host_blob, self.host_table):
            p.close()


@dataclass
class Origin:
    """Where and when a commit was first written: its lineage."""

    location: str
    epoch: int
    tag: str


@dataclass
class Held:
    """An event delivery stopped at a failpoint (a file of the commit copied, the commit not written)."""

    thread: threading.Thread
    gate: threading.Event
    replica: str
    version: int
    source: str
    event: dict
    results: list = field(default_factory=list)


def ids_table(ids: list[int]) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), "v": pa.array([f"r{i}" for i in ids])})


class World:
    """One seed's table, system runtime and checker bookkeeping."""

    def __init__(self, azurite, proxies: Proxies, seed: int, *, auto_rejoin: bool) -> None:
        self.azurite, self.proxies, self.seed = azurite, proxies, seed
        self.container = f"ck{seed % 100000}-{uuid.uuid4().hex[:10]}"
        self.table_name = f"ck{uuid.uuid4().hex[:10]}"
        self.truth = {a: BlobServiceClient.from_connection_string(azurite.connection_string(a)) for a in LOCATIONS}
        for a in LOCATIONS:
            self.truth[a].create_container(self.container)
        loc = {"container": self.container, "path": TABLE_PATH}
        self.config_doc = {"tables": [{
            "name": self.table_name,
            "source": {"name": "eastus", "region": "eastus", "connection": "EASTUS_STORAGE", **loc},
            "replicas": [{"name": a, "region": a, "connection": f"{a.upper()}_STORAGE", **loc} for a in LOCATIONS[1:]],
            "snapshots": {"replica": "westeu", "container": self.container, "path": SNAPSHOT_PATH, "keep_last": 2},
            "auto_rejoin": auto_rejoin,
        }]}
        self.environ = proxies.environ()
        self.runtime = ReplicationRuntime(parse_config(self.config_doc), self.environ)
        self.table = self.runtime.config.table(self.table_name)
        self._instance2: ReplicationRuntime | None = None
        self._topology = TopologyStore(TableServiceClient.from_connection_string(
            azurite.connection_string(DEVSTORE_ACCOUNT)))
        self.history: list[tuple[int, str, int]] = [(0, "eastus", -1)]  # (epoch, primary, promoted at)
        self.writers = {"w1": "eastus", "w2": "eastus"}
        self.pending: list[dict] = []
        self.held: Held | None = None
        self.origins: dict[str, Origin] = {}  # commit tag -> where it was written
        self.acked: dict[str, list[int]] = {}  # tag -> row ids of appends the writer was told succeeded
        self.next_id = 0
        self.commits = 0

    # -- the checker's own (unpartitioned) view -------------------------------------------------
    def options(self, account: str) -> dict:
        return self.azurite.storage_options(account)

    def uri(self) -> str:
        return f"az://{self.container}/{TABLE_PATH}"

    def topology(self):
        return self._topology.get(self.table)

    @property
    def primary(self) -> str:
        return self.history[-1][1]

    @property
    def epoch(self) -> int:
        return self.history[-1][0]

    def sync_history(self) -> None:
        """Record a flip (whoever made it, and even if the operation then failed)."""
        t = self.topology()
        if t.epoch != self.epoch:
            self.history.append((t.epoch, t.primary, -1 if t.promoted_at_version is None else t.promoted_at_version))

    def log_names(self, account: str) -> dict[str, str]:
        cc = self.truth[account].get_container_client(self.container)
        return {b.name: b.etag for b in cc.list_blobs(name_starts_with=f"{TABLE_PATH}/_delta_log/")}

    def head(self, account: str) -> int | None:
        versions = [int(n.rsplit("/", 1)[1][:20]) for n in self.log_names(account)
                    if n.endswith(".json") and n.rsplit("/", 1)[1][:20].isdigit() and len(n.rsplit("/", 1)[1]) == 25]
        return max(versions) if versions else None

    # -- writers -----------------------------------------------------------------------------
    def _writer_step(self, account: str, tag: str, fn) -> str:
        before = self.log_names(account)
        self.origins[tag] = Origin(account, self.topology().epoch, tag)
        try:
            fn(CommitProperties(custom_metadata={"checker": tag}))
            outcome = "ok"
        except Exception as err:  # noqa: BLE001 - a refused commit is not acknowledged
            outcome = f"refused {type(err).__name__}: {str(err)[:120]}"
        after = self.log_names(account)
        port = self.azurite.port
        for name, etag in after.items():
            if before.get(name) != etag:  # Event Grid: one BlobCreated per blob the writer created
                self.pending.append(blob_created_event(account, self.container, name, etag=etag, azurite_port=port))
        return outcome

    def write(self, writer: str, count: int) -> str:
        account = self.writers[writer]
        ids = list(range(self.next_id, self.next_id + count))
        self.next_id += count
        self.commits += 1
        tag = f"{writer}-{self.commits}"

        def commit(props):
            write_deltalake(self.uri(), ids_table(ids), mode="append", storage_options=self.options(account),
                            commit_properties=props)
            self.acked[tag] = ids
        return f"{tag} -> {account} ids {ids[0]}..{ids[-1]}: " + self._writer_step(account, tag, commit)

    def compact(self, writer: str) -> str:
        account = self.writers[writer]
        self.commits += 1
        tag = f"{writer}-c{self.commits}"
        outcome = self._writer_step(account, tag, lambda props: DeltaTable(
            self.uri(), storage_options=self.options(account)).optimize.compact(commit_properties=props))
        return f"{tag} compact {account}: {outcome}"

    def checkpoint(self, writer: str) -> str:
        account = self.writers[writer]
        outcome = self._writer_step(account, f"{writer}-cp", lambda props: DeltaTable(
            self.uri(), storage_options=self.options(account)).create_checkpoint())
        return f"checkpoint {account}: {outcome}"

    # -- a second function app instance, for deliveries held in flight ------------------------
    @property
    def instance2(self) -> ReplicationRuntime:
        if self._instance2 is None:
            self._instance2 = ReplicationRuntime(parse_config(self.config_doc), self.environ)
        return self._instance2

    def hold(self, event: dict, replica: str, version: int, source: str, deliver) -> Held | None:
        """Deliver `event` on another instance and stop it after the first file of `version`
        reached `replica` on the one-version path (before the commit is written). None when the
        delivery finished without getting there (fenced, nothing to copy, another path)."""
        gate, settled, reached = threading.Event(), threading.Event(), threading.Event()
        results: list = []
        # The other replicas' tasks of this delivery run on: wait for them before the next step,
        # so each step's observation sees what that step did (a real object's method, wrapped).
        replicator = self.instance2.replicator_from(self.table_name, source)
        finished = {name: threading.Event() for name in replicator.replicas}
        one = type(replicator)._replicate_one

        def tracked(name, *args, **kwargs):
            try:
                return one(replicator, name, *args, **kwargs)
            finally:
                finished[name].set()
        replicator._replicate_one = tracked

        def action() -> None:
            caller = sys._getframe(3).f_code.co_name  # action <- hit <- _finish_copies <- caller
            if caller != "_replicate_one" or reached.is_set():
                return  # catch-up, seeding: those hold the location's lease; never stop them here
            reached.set()
            settled.set()
            gate.wait(timeout=300)

        def run() -> None:
            try:
                results.append(deliver(self.instance2, event))
            except Exception as err:  # noqa: BLE001 - reported by release
                results.append(err)
            finally:
                settled.set()

        failpoints.arm_each(failpoints.FILE_COPIED, action, where={"replica": replica})
        thread = threading.Thread(target=run, daemon=True, name=f"held-{replica}-{version}")
        thread.start()
        settled.wait()
        if not reached.is_set():
            thread.join()
            failpoints.disarm_all()
            return None
        for name, done in finished.items():
            if name != replica:
                done.wait(timeout=120)
        return Held(thread, gate, replica, version, source, event, results)

    def release(self) -> Held:
        held, self.held = self.held, None
        held.gate.set()
        held.thread.join()
        failpoints.disarm_all()
        return held

    def close(self) -> None:
        if self.held is not None:
            self.release()
        self.proxies.heal_all()
        for rt in (self.runtime, self._instance2):
            if rt is not None:
                rt.close()
        for a in LOCATIONS:
            try:
                self.truth[a].delete_container(self.container)
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass
            self.truth[a].close()
