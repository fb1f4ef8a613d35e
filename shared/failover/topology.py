"""The ReplicationTopology Azure Table: which location of a table takes writes, and since which epoch.

PartitionKey = table name, one row (RowKey "topology") with Primary, Epoch, PromotedAtVersion,
PromotedAt and PreviousPrimary. Without a row the configured source is the primary at epoch 0.
The row changes only under an ETag condition (created the first time), so of two operators
promoting at once exactly one wins. It lives in the function app's storage, next to
ReplicationStatus, and is read once per invocation, never cached.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.data.tables import TableServiceClient, UpdateMode

from shared.config.model import TableConfig
from shared.errors import ReplicaUnreachable, TopologyConflict
from shared.storage.host_table import HostTable

log = logging.getLogger(__name__)

TOPOLOGY_TABLE = "ReplicationTopology"
ROW_KEY = "topology"


@dataclass(frozen=True)
class Topology:
    """A table's primary at one epoch. `etag` is None when no row exists yet (epoch 0)."""

    table: str
    primary: str
    epoch: int = 0
    promoted_at_version: int | None = None
    promoted_at: str | None = None
    previous_primary: str | None = None
    etag: str | None = None

    def as_json(self) -> dict:
        return {"table": self.table, "primary": self.primary, "epoch": self.epoch,
                "promotedAtVersion": self.promoted_at_version, "promotedAt": self.promoted_at,
                "previousPrimary": self.previous_primary}


def default_topology(table: TableConfig) -> Topology:
    """What holds before any promote: the configured source, epoch 0."""
    return Topology(table.name, table.source.name)


class TopologyStore(HostTable):
    """Rows of the ReplicationTopology table.

    Args:
        service: a TableServiceClient for the function app's storage (STATUS_CONNECTION).
    """

    def __init__(self, service: TableServiceClient, *, table_name: str = TOPOLOGY_TABLE) -> None:
        super().__init__(service, table_name)

    def get(self, table: TableConfig) -> Topology:
        """The table's current topology (one point read); the configured default without a row.

        Raises:
            ReplicaUnreachable: the table service did not answer (retryable: replicating with
                a guessed primary could copy from a fenced location).
        """
        try:
            entity = self._table.get_entity(table.name, ROW_KEY)
        except ResourceNotFoundError:
            return default_topology(table)
        except (ServiceRequestError, ServiceResponseError, HttpResponseError) as err:
            raise ReplicaUnreachable(
                f"topology of table {table.name}: the function app's table storage did not answer "
                f"({type(err).__name__}); it will be retried."
            ) from err
        version = entity.get("PromotedAtVersion")
        return Topology(
            table=table.name, primary=entity["Primary"], epoch=int(entity.get("Epoch", 0)),
            promoted_at_version=None if version is None or version == -1 else int(version),
            promoted_at=entity.get("PromotedAt") or None, previous_primary=entity.get("PreviousPrimary") or None,
            etag=entity.metadata.get("etag"),
        )

    def flip(self, current: Topology, primary: str, promoted_at_version: int) -> Topology:
        """Make `primary` the table's primary at epoch `current.epoch + 1`, only if the row is
        still `current` (its ETag; created when `current` came from no row).

        Raises:
            TopologyConflict: another promote changed the row since `current` was read;
                nothing was written.
        """
        now = datetime.now(timezone.utc).isoformat()
        entity = {"PartitionKey": current.table, "RowKey": ROW_KEY, "Primary": primary, "Epoch": current.epoch + 1,
                  "PromotedAtVersion": promoted_at_version, "PromotedAt": now,
                  "PreviousPrimary": current.primary}
        try:
            if current.etag is None:
                self._ensure_table()
                metadata = self._table.create_entity(entity)
            else:
                metadata = self._table.update_entity(entity, mode=UpdateMode.REPLACE, etag=current.etag,
                                                     match_condition=MatchConditions.IfNotModified)
        except (ResourceExistsError, ResourceModifiedError) as err:
            raise TopologyConflict(self._conflict(current, primary)) from err
        except HttpResponseError as err:
            if err.status_code in (409, 412):
                raise TopologyConflict(self._conflict(current, primary)) from err
            raise
        log.warning("topology.flipped table=%s primary=%s previous=%s epoch=%d promoted_at_version=%d",
                    current.table, primary, current.primary, current.epoch + 1, promoted_at_version,
                    extra={"table": current.table, "primary": primary, "epoch": current.epoch + 1})
        return Topology(current.table, primary, current.epoch + 1, promoted_at_version, now, current.primary,
                        metadata.get("etag"))

    def _conflict(self, current: Topology, primary: str) -> str:
        return (f"promotion of table {current.table} to {primary} lost a race: the topology changed after it "
                f"was read at epoch {current.epoch} (primary {current.primary}); another promote won. Nothing "
                "was changed by this one. Check `python -m cli promote --help` and the current primary "
                "(`python -m cli status`), then promote again only if still needed.")
