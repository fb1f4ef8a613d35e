"""One Azure Table in the function app's own storage, created on first write.

Status rows, transfer records, topology and consolidation progress all live next to each
other in the host's storage account (STATUS_CONNECTION, default AzureWebJobsStorage); this
is what they share: the client and creating the table once.
"""

from __future__ import annotations

import threading

from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableServiceClient


class HostTable:
    """Base of the stores over one table; subclasses add the rows' meaning.

    Args:
        service: a TableServiceClient for the function app's storage.
        table_name: the Azure Table's name.
    """

    def __init__(self, service: TableServiceClient, table_name: str) -> None:
        self._service = service
        self._table = service.get_table_client(table_name)
        self._created = False
        self._create_lock = threading.Lock()

    @property
    def table_name(self) -> str:
        return self._table.table_name

    def _ensure_table(self) -> None:
        """Create the table if this process has not seen it yet (idempotent)."""
        if self._created:
            return
        with self._create_lock:
            if not self._created:
                try:
                    self._service.create_table(self._table.table_name)
                except ResourceExistsError:
                    pass
                self._created = True
