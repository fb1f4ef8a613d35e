"""Event Grid payloads -> BlobEvent -> CommitRef (which table, which log file).

Accepts the Event Grid schema and the CloudEvents 1.0 schema. Blob URLs may be
Azure-style (`https://<account>.blob|dfs.core.windows.net/<container>/<path>`) or
Azurite path-style (`http://127.0.0.1:<port>/<account>/<container>/<path>`).
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote, urlparse

from shared.config.model import GroupConfig, ReplicationConfig, TableConfig
from shared.delta.log import LOG_DIR, LogFile, parse_log_name
from shared.errors import InvalidEvent
from shared.groups.members import member_of_blob

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
BLOB_RENAMED = "Microsoft.Storage.BlobRenamed"
HANDLED_EVENT_TYPES = (BLOB_CREATED, BLOB_RENAMED)

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "host.docker.internal", "azurite"}
_TOPIC_ACCOUNT_RE = re.compile(r"/storageAccounts/([^/]+)", re.IGNORECASE)


@dataclass(frozen=True)
class BlobEvent:
    """A storage event reduced to what routing needs; `path` is the decoded blob name."""

    event_type: str
    account: str
    container: str
    path: str
    api: str | None
    event_id: str | None


@dataclass(frozen=True)
class CommitRef:
    """A replicable `_delta_log` file of a configured table, named by an event."""

    table: TableConfig
    log_file: LogFile
    location: str | None = None  # which location of the table the event came from
    relative: str | None = None  # a group's table: its path under the group's prefix

    @property
    def version(self) -> int | None:
        return self.log_file.version


def parse_event(envelope: Mapping[str, Any]) -> BlobEvent:
    """Read a BlobCreated/BlobRenamed event in the Event Grid or CloudEvents schema.

    For BlobRenamed the destination is the blob that now exists, so it is the one used.

    Raises:
        InvalidEvent: unsupported event type, wrong schema, missing or malformed URL, or a
            path with `..` segments (also percent-encoded or double-encoded).
    """
    if not isinstance(envelope, Mapping):
        raise InvalidEvent("event is not a JSON object; expected an Event Grid or CloudEvents event")
    if "eventType" in envelope:
        event_type, topic = envelope.get("eventType"), envelope.get("topic")
    elif "specversion" in envelope and "type" in envelope:
        event_type, topic = envelope.get("type"), envelope.get("source")
    else:
        raise InvalidEvent(
            "event has neither eventType (Event Grid schema) nor specversion and type "
            "(CloudEvents schema); subscribe with one of these schemas"
        )
    if event_type not in HANDLED_EVENT_TYPES:
        raise InvalidEvent(
            f"event type {event_type!r} is not handled; only {', '.join(HANDLED_EVENT_TYPES)} "
            "are replicated (filter the subscription to them)"
        )
    data = envelope.get("data")
    if not isinstance(data, Mapping):
        raise InvalidEvent(f"{event_type} event has no data object")
    url_key = "destinationUrl" if event_type == BLOB_RENAMED else "url"
    url = data.get(url_key)
    if not isinstance(url, str) or not url:
        raise InvalidEvent(f"{event_type} event has no data.{url_key}")
    account, container, path = split_blob_url(url)
    topic_account = _TOPIC_ACCOUNT_RE.search(topic) if isinstance(topic, str) else None
    if topic_account and topic_account.group(1).lower() != account.lower():
        raise InvalidEvent(
            f"event topic names account {topic_account.group(1)!r} but its URL names {account!r}; refusing it"
        )
    api = data.get("api")
    return BlobEvent(
        event_type=event_type,
        account=account,
        container=container,
        path=path,
        api=api if isinstance(api, str) else None,
        event_id=str(envelope.get("id")) if envelope.get("id") is not None else None,
    )


def split_blob_url(url: str) -> tuple[str, str, str]:
    """Split a blob URL into (account, container, decoded blob name).

    Raises:
        InvalidEvent: not an http(s) blob URL, or the name has `.`/`..`/empty segments,
            backslashes or NULs, even after a second percent-decoding.
    """
    try:
        parsed = urlparse(url)
        host = (parsed.hostname or "").lower()
    except ValueError as err:
        raise InvalidEvent("event data.url is not a valid URL") from err
    if parsed.scheme not in ("https", "http") or not host:
        raise InvalidEvent("event data.url is not an http(s) blob URL")
    raw_path = parsed.path
    if host in _LOOPBACK_HOSTS or re.fullmatch(r"[\d.]+", host):
        account, _, rest = raw_path.lstrip("/").partition("/")
    elif host.endswith((".blob.core.windows.net", ".dfs.core.windows.net")) or ".blob." in host or ".dfs." in host:
        account, rest = host.split(".")[0], raw_path.lstrip("/")
    else:
        raise InvalidEvent(f"event URL host {host!r} is not a storage blob or dfs endpoint")
    container, _, name = rest.partition("/")
    if not account or not container or not name:
        raise InvalidEvent("event URL does not name an account, a container and a blob")
    decoded = unquote(name)
    if any(p in ("", ".", "..") for p in decoded.split("/")) or "\\" in decoded or "\x00" in decoded:
        raise InvalidEvent(f"event blob path {_printable(name)!r} has '.', '..' or empty segments; refusing it")
    # Double-encoded traversal (%252e%252e) would become '..' for anything decoding again.
    if any(p in (".", "..") for p in unquote(decoded).replace("\\", "/").split("/")):
        raise InvalidEvent(f"event blob path {_printable(name)!r} hides '..' behind percent-encoding; refusing it")
    return unquote(account), unquote(container), decoded


def _printable(text: str) -> str:
    return text[:200]


def route_event(event: BlobEvent, config: ReplicationConfig, source_accounts: Mapping[str, str]) -> CommitRef | None:
    """Find the configured table, location and log file an event names.

    Any location of a table (its source or a replica) may be the primary after a promote,
    so events from every location route here; the caller fences those from a location that
    is not the current primary.

    Args:
        event: the parsed event.
        config: the replication configuration.
        source_accounts: connection name -> account name, for every configured location.

    Returns:
        The CommitRef, or None for a blob inside a configured table that is not a
        replicable log file (data files, temporary and hidden files): those are ignored.

    Raises:
        InvalidEvent: the account, container or path matches no configured table.
    """
    account_matched = container_matched = False
    # Tables, then groups: a group's table is named by the part between the group's prefix and
    # `/_delta_log/` (O(groups), whatever the number of tables).
    for places in (*config.tables, *config.groups):
        for loc in places.locations:
            if source_accounts.get(loc.connection, "").lower() != event.account.lower():
                continue
            account_matched = True
            if loc.container != event.container:
                continue
            container_matched = True
            if loc.path and not event.path.startswith(loc.path + "/"):
                continue
            if isinstance(places, GroupConfig):
                found = member_of_blob(places, loc.path, event.path)
                if found is None:
                    return None  # under the prefix, not a member's log file: data files, excluded tables
                relative, name = found
                table = places.member(relative)
            else:
                rest = event.path[len(loc.path) + 1:]
                if not rest.startswith(LOG_DIR + "/"):
                    return None
                relative, name, table = None, rest[len(LOG_DIR) + 1:], places
            if name.startswith(".") or "/." in name:
                return None
            log_file = parse_log_name(name)
            return CommitRef(table=table, log_file=log_file, location=loc.name, relative=relative) if log_file else None
    if not account_matched:
        raise InvalidEvent(f"event for account {event.account!r}, which holds no configured table location")
    if not container_matched:
        raise InvalidEvent(
            f"event for container {event.container!r} of account {event.account!r}, which holds no configured table"
        )
    raise InvalidEvent(
        f"event for blob {_printable(event.path)!r} in {event.account}/{event.container}, "
        "which is under no configured table"
    )


_sequencer = itertools.count(1)


def blob_created_envelope(account: str, url: str, container: str, blob: str, *, size: int, etag: str,
                          api: str = "PutBlob") -> dict:
    """A Microsoft.Storage.BlobCreated event in the Event Grid schema, shaped as Azure Storage sends it.

    The local relay and the tests use it to stand in for Event Grid, which Azurite lacks.
    """
    return {
        "id": str(uuid.uuid4()),
        "topic": f"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local/providers/"
                 f"Microsoft.Storage/storageAccounts/{account}",
        "subject": f"/blobServices/default/containers/{container}/blobs/{blob}",
        "eventType": BLOB_CREATED,
        "eventTime": datetime.now(timezone.utc).isoformat(),
        "dataVersion": "",
        "metadataVersion": "1",
        "data": {
            "api": api,
            "clientRequestId": str(uuid.uuid4()),
            "requestId": str(uuid.uuid4()),
            "eTag": etag,
            "contentType": "application/octet-stream",
            "contentLength": size,
            "blobType": "BlockBlob",
            "url": url,
            "sequencer": f"{next(_sequencer):032x}",
            "storageDiagnostics": {"batchId": str(uuid.uuid4())},
        },
    }
