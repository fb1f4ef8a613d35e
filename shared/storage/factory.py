"""The one place stores are built: a location's table, or another folder of a location's account.

Every caller (replication, maintenance, failover, consolidation, cost, the CLI) asks this for a
store; none builds one from an SDK client or reaches a client itself. With obstore clients
(`STORAGE_CLIENT=obstore`, the default: shared.config.settings) the stores send their hot path
through object_store (`ObjectTableStore`); without, everything goes through the SDK
(`BlobTableStore`, the fallback). Both pass the same conformance suite.
"""

from __future__ import annotations

from collections.abc import Mapping

from azure.storage.blob import BlobServiceClient

from shared.storage.blob_table_store import BlobTableStore
from shared.storage.object_client import ObjectClients
from shared.storage.object_table_store import ObjectTableStore


class Stores:
    """Stores over the runtime's clients, one per connection name.

    Args:
        clients: connection name -> BlobServiceClient (the runtime's; reused across invocations).
        objects: the runtime's obstore clients, or None for SDK-only stores.
    """

    def __init__(self, clients: Mapping[str, BlobServiceClient], objects: ObjectClients | None = None) -> None:
        self._clients = clients
        self._objects = objects

    def table(self, location) -> BlobTableStore:
        """The Delta table at `location` (a LocationConfig: connection, container, path)."""
        return self.folder(location, location.path, label=location.name)

    def folder(self, location, root: str, *, label: str, container: str | None = None) -> BlobTableStore:
        """Another folder of `location`'s account, laid out like a table (a quarantine, the
        promotion markers, a snapshot folder): `root` in `container` (default: the location's)."""
        container = container or location.container
        service = self._clients[location.connection]
        if self._objects is not None:
            return ObjectTableStore(service, container, root, label=label, connection_name=location.connection,
                                    objects=self._objects)
        return BlobTableStore(service, container, root, label=label, connection_name=location.connection)
