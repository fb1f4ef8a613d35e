"""One Azure Table in the function app's own storage, created on first write.

Status rows, transfer records, topology and consolidation progress all live next to each
other in the host's storage account (STATUS_CONNECTION, default AzureWebJobsStorage); this
is what they share: the client and creating the table once.
"""

from __future__ import annotations

import contextlib
import threading

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableServiceClient

from shared.storage.errors import TABLE_ROLE, storage_errors

#: The setting naming the function app's storage (default AzureWebJobsStorage), for messages.
HOST_CONNECTION = "STATUS_CONNECTION"


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

    @contextlib.contextmanager
    def _errors(self, what: str):
        """SDK failures of the block as the project's errors (shared.storage.errors: no answer or
        5xx/429 is a retryable ReplicaUnreachable, 401/403 AccessDenied); absent, exists and
        changed (404/409/412) stay the caller's decisions."""
        with storage_errors(connection=HOST_CONNECTION, subject=f"the {self.table_name} table in the function "
                            "app's storage", what=what, role=TABLE_ROLE,
                            passthrough=(ResourceNotFoundError, ResourceExistsError, ResourceModifiedError)):
            yield

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
