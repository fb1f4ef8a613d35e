"""Local event relay: watch each table's *current primary* `_delta_log/` and emit Event Grid BlobCreated events.

Azurite emits no Event Grid events, so local runs use this. It plays Event Grid faithfully enough
for a full failover drill:
- it follows the topology: each poll reads which location is the table's primary (one point read)
  and lists that location's log, so after `promote` the new primary's writes are relayed; a table
  whose topology cannot be read is skipped that poll (relaying from a guessed primary would be
  exactly the mistake the fence prevents);
- it recognises a blob by name *and ETag*, as Event Grid fires on every write: after `rejoin`
  removed a location's outage commits, the version written there again is a new blob and is relayed;
- each poll lists from the last version it saw (`start_from`), so a poll costs O(new blobs). When a
  location becomes primary again (a new epoch), its cursor restarts at the promotion's version, since
  rejoin may have rewritten the log below where the cursor had been (re-deliveries are harmless).
Positions are kept per table and location in a small JSON state file, so a restarted relay (or a
restarted Azurite) resumes where it was; delivery is at least once, which replication tolerates.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from azure.core.exceptions import (
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from shared.delta.log import LAST_CHECKPOINT, LOG_DIR, parse_log_name
from shared.errors import ReplicationError
from shared.replication.events import blob_created_envelope

log = logging.getLogger(__name__)


@dataclass
class TableCursor:
    """Where the relay is in one location's log."""

    version_prefix: str = ""  # 20-digit prefix of the newest version seen ("" = from the start)
    seen_at_prefix: dict[str, str] = field(default_factory=dict)  # name -> ETag delivered at that version
    last_checkpoint_etag: str = ""
    epoch: int | None = None  # the topology epoch this location was last polled as primary in

    def as_json(self) -> dict:
        return {"version_prefix": self.version_prefix, "seen_at_prefix": self.seen_at_prefix,
                "last_checkpoint_etag": self.last_checkpoint_etag, "epoch": self.epoch}

    @classmethod
    def from_json(cls, raw: dict) -> "TableCursor":
        seen = raw.get("seen_at_prefix", {})
        if isinstance(seen, list):  # state written before ETags were kept: names only
            seen = {name: "" for name in seen}
        return cls(raw.get("version_prefix", ""), dict(seen), raw.get("last_checkpoint_etag", ""), raw.get("epoch"))


class LogRelay:
    """Polls every table's current primary and hands new log blobs to `deliver` as events.

    Args:
        runtime: the replication runtime (its config and clients).
        state_path: where the cursors are kept between runs.
        deliver: called with each event; an exception leaves the blob undelivered (retried next poll).
        topology: table config -> its Topology now (default: `runtime.topology`); raises when unknown.
    """

    def __init__(self, runtime, state_path: str | os.PathLike, deliver: Callable[[dict], None], *,
                 topology: Callable | None = None) -> None:
        self.runtime = runtime
        self.state_path = Path(state_path)
        self.deliver = deliver
        self.topology = topology or (lambda table: runtime.topology(table.name))
        self.cursors: dict[str, TableCursor] = {}
        if self.state_path.exists():
            for key, raw in json.loads(self.state_path.read_text()).items():
                if "/" not in key:  # state written before the relay followed the topology: the source's
                    table = next((t for t in runtime.config.tables if t.name == key), None)
                    key = f"{key}/{table.source.name}" if table is not None else key
                self.cursors[key] = TableCursor.from_json(raw)

    def _save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: v.as_json() for k, v in self.cursors.items()}, indent=1))
        tmp.replace(self.state_path)  # atomic: a crash never leaves a half-written state

    def poll(self) -> int:
        """One pass over every table; returns how many events were delivered.

        A table skipped this poll (topology unknown, primary unreachable) is in `self.problems`.
        """
        delivered = 0
        self.problems: list[Exception] = []
        for table in self.runtime.config.tables:
            try:
                topology = self.topology(table)
            except ReplicationError as err:
                self.problems.append(err)
                log.warning("relay.topology_unavailable table=%s error=%s", table.name, err)
                continue
            try:
                delivered += self._poll_location(table, topology)
            except (ServiceRequestError, ServiceResponseError) as err:
                self.problems.append(err)
                log.warning("relay.unreachable table=%s location=%s error=%s", table.name, topology.primary,
                            type(err).__name__)
        return delivered

    def _cursor(self, table, topology) -> TableCursor:
        cursor = self.cursors.setdefault(f"{table.name}/{topology.primary}", TableCursor())
        if cursor.epoch != topology.epoch:
            if topology.promoted_at_version is not None:
                start = f"{topology.promoted_at_version:020d}"
                if not cursor.version_prefix or start < cursor.version_prefix:
                    cursor.version_prefix, cursor.seen_at_prefix = start, {}
            cursor.epoch = topology.epoch
        return cursor

    def _poll_location(self, table, topology) -> int:
        loc = table.location(topology.primary)
        client = self.runtime.clients[loc.connection]
        container = client.get_container_client(loc.container)
        base = f"{loc.path}/{LOG_DIR}/"
        cursor = self._cursor(table, topology)
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
            elif name[:20] == cursor.version_prefix and cursor.seen_at_prefix.get(name) == blob.etag:
                continue
            url = f"{client.url.split('?')[0].rstrip('/')}/{quote(loc.container)}/{quote(blob.name)}"
            event = blob_created_envelope(client.account_name, url, loc.container, blob.name,
                                          size=blob.size, etag=blob.etag)
            self.deliver(event)  # raises: stop here, the cursor has not moved past this blob
            delivered += 1
            if name == LAST_CHECKPOINT:
                cursor.last_checkpoint_etag = blob.etag
            elif name[:20] == cursor.version_prefix:
                cursor.seen_at_prefix[name] = blob.etag
            elif name[:20] > cursor.version_prefix:
                cursor.version_prefix, cursor.seen_at_prefix = name[:20], {name: blob.etag}
            self._save()
        return delivered
