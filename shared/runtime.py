"""Host-wide objects, built once per Functions host: configuration, clients, replicators.

Clients and their connection pools are reused across invocations; replication state is
not (each invocation reads positions from the replicas themselves).
"""

from __future__ import annotations

import atexit
import threading
from collections import OrderedDict
from collections.abc import Mapping

from shared import deadline
from shared.config.model import ReplicationConfig, TableConfig
from shared.config.overlap import location_conflicts
from shared.config.settings import (
    load_config,
    load_tuning,
    resolve_alerts,
    resolve_connection,
    resolve_host_storage,
    resolve_status_connection,
    resolve_storage_client,
    transport_options,
)
from shared.delta.log import TableRoot
from shared.config.tuning import Tuning
from shared.errors import ConfigError
from shared.executors import Executors
from shared.groups.catalog import GroupCatalog
from shared.groups.members import split_name
from shared.replication.fence import RememberedTopologies, WriteFence
from shared.replication.replicator import TableReplicator
from shared.replication.sequencer import Sequencer
from shared.storage.factory import Stores
from shared.storage.clients import RequestCounter, build_blob_service_client, with_deadline
from shared.storage.lease import LeaseStore
from shared.storage.object_client import ObjectClients, enabled as object_client_enabled

_runtime_lock = threading.Lock()
GROUP_REPLICATOR_CACHE = 64  # replicators of group tables kept between invocations (each holds its stores)


class ReplicationRuntime:
    """Everything an invocation needs, resolved and validated up front.

    Args:
        config: the replication configuration.
        environ: app settings for connection resolution (default: the process environment).
        counter: optional request counter attached to every client (tests, benchmarks).
        tuning: batch and pool sizes and the invocation deadline (default: REPLICATION_TUNING, else
            the defaults in shared/config/tuning.py).

    Raises:
        ConfigError: a connection is not defined or malformed; names the field path.
    """

    def __init__(self, config: ReplicationConfig, environ: Mapping[str, str] | None = None, *,
                 counter: RequestCounter | None = None, transfer_flush_seconds: float | None = None,
                 tuning: Tuning | None = None) -> None:
        self.config = config
        self.tuning = tuning or load_tuning(environ)
        self.transfer_flush_seconds = transfer_flush_seconds
        self.counter = counter
        self._environ = environ
        self._status = None
        self._group_status = None
        self._transfer = None
        self._transfer_recorder = None
        self._shared_table_service = None
        self._consolidation_status = None
        self._alerts = None
        self._leases = None
        self._host_client = None
        self._topology = None
        self._row_reader_built = None
        self._topology_lock = threading.Lock()
        self.remembered = RememberedTopologies()  # every fresh read, for routing (fence.py)
        self._by_primary: dict[tuple[str, str], TableReplicator] = {}
        self._group_replicators: OrderedDict[tuple[str, str], TableReplicator] = OrderedDict()
        self._lock = threading.Lock()
        self.settings = {}
        problems = []
        placed = [(f"tables[{i}]", t) for i, t in enumerate(config.tables)]
        placed += [(f"groups[{i}]", g) for i, g in enumerate(config.groups)]
        for field_path, places in placed:
            for where, loc in [("source", places.source)] + [(f"replicas[{j}]", r)
                                                             for j, r in enumerate(places.replicas)]:
                if loc.connection in self.settings:
                    continue
                try:
                    self.settings[loc.connection] = resolve_connection(loc.connection, environ)
                except ConfigError as err:
                    problems.append(f"{field_path}.{where}.connection: {err}")
        for i, consolidation in enumerate(config.consolidations):
            located = [(f"sources[{j}]", s.location) for j, s in enumerate(consolidation.sources) if s.table is None]
            for where, loc in located + [("target", consolidation.target)]:
                if loc.connection in self.settings:
                    continue
                try:
                    self.settings[loc.connection] = resolve_connection(loc.connection, environ)
                except ConfigError as err:
                    problems.append(f"consolidations[{i}].{where}.connection: {err}")
        if not problems:
            problems = location_conflicts(config, self.settings)  # by account, not by connection name
        if problems:
            raise ConfigError("invalid replication configuration; fix these and restart: " + "; ".join(problems))
        self.clients = {name: build_blob_service_client(s, counter=counter) for name, s in self.settings.items()}
        # A CLI command sends every request through `requests`, whose timeouts its deadline caps and whose
        # endpoints it names when it times out (cli/deadline.py): object_store's would outlive the command.
        self.storage_client = resolve_storage_client(environ) if object_client_enabled() else "sdk"
        self.stores = Stores(self.clients, ObjectClients(self.settings, counter=counter)
                             if self.storage_client == "obstore" else None)
        self.source_accounts = {name: s.account_name for name, s in self.settings.items()}
        # The one owner of the host's thread pools (their tasks carry the invocation's deadline).
        self.executors = Executors(file_workers=self.tuning.file_copy_workers,
                                   task_workers=self.tuning.task_workers)
        self._sequencer = Sequencer()
        self.replicators = {t.name: self._build_replicator(t) for t in config.tables}
        self.groups = GroupCatalog(config, self.stores)  # the tables found under each group's prefix

    def table(self, name: str) -> TableConfig:
        """A configured table, or a group's table (`<group>:<path, '/' as '.'>`) by name.

        Raises:
            KeyError: neither a configured table nor a table of a configured group.
        """
        try:
            return self.config.table(name)
        except KeyError:
            return self.groups.table(name)

    def tables(self) -> list[TableConfig]:
        """The configured tables, then every group table this host knows (events, sweeps)."""
        return [*self.config.tables, *self.groups.tables()]

    def is_configured(self, name: str) -> bool:
        """A configured table's name, or a name in a configured group (its status rows are this app's),
        without a lookup in storage."""
        parts = split_name(name)
        return any(t.name == name for t in self.config.tables) or (
            parts is not None and any(g.name == parts[0] for g in self.config.groups))

    def table_names(self) -> str:
        """The known table names, for an error that says which exist."""
        return ", ".join(t.name for t in self.tables())

    def _build_replicator(self, table: TableConfig, primary: str | None = None) -> TableReplicator:
        """A replicator from `primary` (default: the configured source) to every other location."""
        source_loc = table.source if primary is None else table.location(primary)
        source = self.stores.table(source_loc)
        replicas = {r.name: self.stores.table(r) for r in table.locations if r.name != source_loc.name}
        root = TableRoot(self.settings[source_loc.connection].account_name, source_loc.container, source_loc.path)
        return TableReplicator(table, source, replicas, root, self.executors, tuning=self.tuning,
                               leases=self.lease_store, sequencer=self._sequencer,
                               fence=WriteFence(self.topology, table.name, source_loc.name))

    def invocation(self, what: str):
        """The context an invocation runs in: its deadline, `tuning.invocation_seconds` from now,
        reaching every storage request of the work it starts (shared/deadline.py)."""
        return deadline.within(self.tuning.invocation_seconds, what)

    def topology_store(self):
        """The ReplicationTopology table (STATUS_CONNECTION), built on first use."""
        with self._topology_lock:  # built once: each build would open a RowReader's connections
            if self._topology is None:
                from shared.failover.markers import PromotionMarkers
                from shared.failover.topology import TopologyStore

                # The markers decide when the table itself is missing (replaced host storage).
                self._topology = TopologyStore(self.table_service(), markers=PromotionMarkers(self),
                                               rows=self._row_reader)
        return self._topology

    def _row_reader(self, table_client):
        """The topology's lean point read (shared/storage/table_row.py), unless a proxy is configured
        (then the SDK, which honours it, reads every row)."""
        from shared.storage.table_row import RowReader

        options = transport_options(self._environ)
        if "use_env_settings" not in options:
            return None
        self._row_reader_built = RowReader(table_client, counter=self.counter,
                                           ca_bundle=options.get("connection_verify"))
        return self._row_reader_built

    def topology(self, table_name: str):
        """The table's primary and epoch, read now (one point read; never a cached answer).

        Without the function app's storage configured there is nothing to read: the configured
        source is the primary at epoch 0. Every answer is remembered for `remembered_topology`.

        Raises:
            ReplicaUnreachable: the function app's table storage did not answer.
            TopologyUnavailable: its ReplicationTopology table is missing and the table was promoted
                (or that cannot be told); see shared/failover/markers.py.
        """
        from shared.failover.topology import default_topology

        table = self.table(table_name)
        try:
            store = self.topology_store()
        except ConfigError:
            topology = default_topology(table)
        else:
            topology = store.get(table)
        self.remembered.put(table_name, topology)
        return topology

    def remembered_topology(self, table_name: str, location: str):
        """The last fresh read, if it may route an event from `location` (fence.RememberedTopologies)."""
        return self.remembered.routing(table_name, location)

    def forget_topology(self, table_name: str) -> None:
        """Drop the remembered topology (a write fence refused its epoch)."""
        self.remembered.forget(table_name)

    def replicator(self, table_name: str, topology=None) -> TableReplicator:
        """The replicator from the table's current primary (`topology`, else read now) to every
        other location. Replicators (stores and clients) are reused; the topology is not."""
        topology = topology or self.topology(table_name)
        return self.replicator_from(table_name, topology.primary)

    def replicator_from(self, table_name: str, primary: str) -> TableReplicator:
        """The replicator that treats location `primary` as the primary (built once, reused).
        Only what the topology names may write; others serve reads made before it is known."""
        table = self.table(table_name)
        if primary == table.source.name and table_name in self.replicators:
            return self.replicators[table_name]
        key = (table_name, primary)
        # A group's tables share a bounded cache (least recently used out): host memory must not grow
        # with the number of tables a group holds; one is rebuilt from configuration when needed again.
        cache = self._group_replicators if table.group else self._by_primary
        with self._lock:
            if key in cache:
                if table.group:
                    cache.move_to_end(key)
                return cache[key]
            replicator = cache[key] = self._build_replicator(table, primary)
            if table.group and len(cache) > GROUP_REPLICATOR_CACHE:
                cache.popitem(last=False)
            return replicator

    def topology_async(self, table_name: str):
        """The topology read on a small pool of its own (a future): beside the commit read, and
        never queued behind replica tasks waiting for their turn."""
        return self.executors.topology.submit(self.topology, table_name)

    def lease_store(self) -> LeaseStore:
        """Leases in the function app's storage (STATUS_CONNECTION / AzureWebJobsStorage), built on first use.

        Raises:
            ConfigError: the function app's storage connection is not defined.
        """
        with self._lock:
            if self._leases is None:
                settings = resolve_host_storage(self._environ)
                self._host_client = build_blob_service_client(settings, counter=self.counter, host=True)
                self._leases = LeaseStore(self._host_client, connection_name=settings.name)
            return self._leases

    def _table_service(self, **options):
        """A TableServiceClient for the function app's own storage (STATUS_CONNECTION)."""
        from azure.data.tables import TableServiceClient

        settings = resolve_status_connection(self._environ)
        options = with_deadline({**transport_options(self._environ), **options}, self.counter)
        if settings.connection_string:
            return TableServiceClient.from_connection_string(settings.connection_string, **options)
        from azure.identity import DefaultAzureCredential

        return TableServiceClient(settings.endpoint, credential=DefaultAzureCredential(), **options)

    def table_service_with(self, **options):
        """A TableServiceClient of its own for the function app's storage, with these client options
        (e.g. the read resolver's short timeouts).

        Raises:
            ConfigError: the function app's storage connection is not defined.
        """
        return self._table_service(**options)

    def table_service(self):
        """The Azure Table service of the function app's storage, shared by its stores, built on first use."""
        with self._lock:
            if self._shared_table_service is None:
                self._shared_table_service = self._table_service()
            return self._shared_table_service

    def status_store(self):
        """The ReplicationStatus table (STATUS_CONNECTION), built on first use."""
        if self._status is None:
            from shared.health.status import StatusStore

            self._status = StatusStore(self.table_service())
        return self._status

    def group_status(self):
        """The ReplicationGroupStatus table (group recovery points), built on first use."""
        if self._group_status is None:
            from shared.health.recovery_point import GroupStatusStore

            self._group_status = GroupStatusStore(self.table_service())
        return self._group_status

    def transfer_store(self):
        """The ReplicationTransfer table (daily replicated bytes), next to the status table.

        Its client retries little: the record is written after replication and must not hold
        an invocation for long when the table service does not answer.
        """
        if self._transfer is None:
            from shared.cost.transfer import TransferStore

            self._transfer = TransferStore(self._table_service(retry_total=2, retry_backoff_factor=0.2,
                                                               connection_timeout=5, read_timeout=10))
        return self._transfer

    def transfer_recorder(self):
        """Replicated bytes, batched into the ReplicationTransfer rows (flushed at close)."""
        with self._lock:
            if self._transfer_recorder is None:
                from shared.cost.transfer import TransferRecorder

                options = {} if self.transfer_flush_seconds is None else {"flush_seconds": self.transfer_flush_seconds}
                self._transfer_recorder = TransferRecorder(self.transfer_store, **options)
            return self._transfer_recorder

    def flush_transfers(self) -> None:
        """Write the replicated bytes the recorder holds now (tests, shutdown)."""
        if self._transfer_recorder is not None:
            self._transfer_recorder.flush()

    def consolidation_status(self):
        """The ConsolidationStatus table (STATUS_CONNECTION), built on first use."""
        if self._consolidation_status is None:
            from shared.consolidation.state import ConsolidationStatusStore

            self._consolidation_status = ConsolidationStatusStore(self.table_service())
        return self._consolidation_status

    def alert_publisher(self):
        """The alert publisher, or None when ALERT_TOPIC_ENDPOINT is not set."""
        if self._alerts is None:
            settings = resolve_alerts(self._environ)
            if settings is None:
                return None
            from azure.core.credentials import AzureKeyCredential
            from azure.eventgrid import EventGridPublisherClient

            from shared.health.alerts import AlertPublisher

            if settings.key:
                credential = AzureKeyCredential(settings.key)
            else:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            self._alerts = AlertPublisher(EventGridPublisherClient(settings.endpoint, credential))
        return self._alerts

    def close(self) -> None:
        self.executors.close()
        if self._transfer_recorder is not None:
            self._transfer_recorder.close()
        for client in self.clients.values():
            client.close()
        if self._host_client is not None:
            self._host_client.close()
        if self._row_reader_built is not None:
            self._row_reader_built.close()


_runtime: ReplicationRuntime | None = None


def get_runtime() -> ReplicationRuntime:
    """The host's runtime, built from the environment on first use."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = ReplicationRuntime(load_config())
            # The host never closes it; what the transfer recorder holds is written on the way out.
            atexit.register(_runtime.flush_transfers)
        return _runtime


def reset_runtime() -> None:
    """Forget the host's runtime (tests that change settings call this)."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.close()
        _runtime = None
