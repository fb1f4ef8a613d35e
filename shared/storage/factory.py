"""The one place stores are built: a location's table, or another folder of a location's account.

Every caller (replication, maintenance, failover, consolidation, cost, the CLI) asks this for a
store; none builds one from an SDK client or reaches a client itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from azure.storage.blob import BlobServiceClient

from shared.storage.blob_table_store import BlobTableStore


class Stores:
    """Stores over the runtime's blob clients, one per connection name.

    Args:
        clients: connection name -> BlobServiceClient (the runtime's; reused across invocations).
    """

    def __init__(self, clients: Mapping[str, BlobServiceClient]) -> None:
        self._clients = clients

    def table(self, location) -> BlobTableStore:
        """The Delta table at `location` (a LocationConfig: connection, container, path)."""
        return self.folder(location, location.path, label=location.name)

    def folder(self, location, root: str, *, label: str, container: str | None = None) -> BlobTableStore:
        """Another folder of `location`'s account, laid out like a table (a quarantine, the
        promotion markers, a snapshot folder): `root` in `container` (default: the location's)."""
        return BlobTableStore(self._clients[location.connection], container or location.container, root,
                              label=label, connection_name=location.connection)
