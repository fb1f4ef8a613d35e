"""Local event relay: watch the primaries' `_delta_log/` and emit Event Grid BlobCreated events.

Azurite emits no Event Grid events, so local runs use this. Each poll lists a table's log
from the last version it saw (`start_from`), so a poll costs O(new blobs), not O(log).
Its position is kept in a small JSON state file, so a restarted relay (or a restarted
Azurite) resumes where it was; delivery is at least once, which replication tolerates.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from azure.core.exceptions import (
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from shared.delta.log import LAST_CHECKPOINT, LOG_DIR, parse_log_name
from shared.replication.events import blob_created_envelope

log = logging.getLogger(__name__)


@dataclass
class TableCursor:
    """Where the relay is in one table's log."""

    version_prefix: str = ""  # 20-digit prefix of the newest version seen ("" = from the start)
    seen_at_prefix: tuple[str, ...] = ()  # names at that version already delivered
    last_checkpoint_etag: str = ""

    def as_json(self) -> dict:
        return {"version_prefix": self.version_prefix, "seen_at_prefix": list(self.seen_at_prefix),
                "last_checkpoint_etag": self.last_checkpoint_etag}


class LogRelay:
    """Polls every configured primary and hands new log blobs to `deliver` as events.

    Args:
        runtime: the replication runtime (its config and clients).
        state_path: where the cursors are kept between runs.
        deliver: called with each event; an exception leaves the blob undelivered (retried next poll).
    """

    def __init__(self, runtime, state_path: str | os.PathLike, deliver: Callable[[dict], None]) -> None:
        self.runtime = runtime
        self.state_path = Path(state_path)
        self.deliver = deliver
        self.cursors: dict[str, TableCursor] = {}
        if self.state_path.exists():
            raw = json.loads(self.state_path.read_text())
            for name, c in raw.items():
                self.cursors[name] = TableCursor(c.get("version_prefix", ""), tuple(c.get("seen_at_prefix", [])),
                                                 c.get("last_checkpoint_etag", ""))

    def _save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: v.as_json() for k, v in self.cursors.items()}, indent=1))
        tmp.replace(self.state_path)  # atomic: a crash never leaves a half-written state

    def poll(self) -> int:
        """One pass over every table; returns how many events were delivered."""
        delivered = 0
        for table in self.runtime.config.tables:
            try:
                delivered += self._poll_table(table)
            except (ServiceRequestError, ServiceResponseError) as err:
                log.warning("relay.unreachable table=%s error=%s", table.name, type(err).__name__)
        return delivered

    def _poll_table(self, table) -> int:
        client = self.runtime.clients[table.source.connection]
        container = client.get_container_client(table.source.container)
        base = f"{table.source.path}/{LOG_DIR}/"
        cursor = self.cursors.setdefault(table.name, TableCursor())
        kwargs = {"start_from": base + cursor.version_prefix} if cursor.version_prefix else {}
        try:
            blobs = list(container.list_blobs(name_starts_with=base, **kwargs))
        except ResourceNotFoundError:
            return 0
        delivered = 0
        for blob in blobs:
            name = blob.name[len(base):]
            lf = parse_log_name(name)
            if lf is None or name.startswith("_sidecars/"):
                continue  # temporary, hidden or sidecar: never delivered as such
            if name == LAST_CHECKPOINT:
                if blob.etag == cursor.last_checkpoint_etag:
                    continue
            elif name[:20] == cursor.version_prefix and name in cursor.seen_at_prefix:
                continue
            url = f"{client.url.split('?')[0].rstrip('/')}/{quote(table.source.container)}/{quote(blob.name)}"
            event = blob_created_envelope(client.account_name, url, table.source.container, blob.name,
                                          size=blob.size, etag=blob.etag)
            self.deliver(event)  # raises: stop here, the cursor has not moved past this blob
            delivered += 1
            if name == LAST_CHECKPOINT:
                cursor.last_checkpoint_etag = blob.etag
            elif name[:20] == cursor.version_prefix:
                cursor.seen_at_prefix = cursor.seen_at_prefix + (name,)
            else:
                cursor.version_prefix, cursor.seen_at_prefix = name[:20], (name,)
            self._save()
        return delivered
