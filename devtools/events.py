"""Build Event Grid BlobCreated events the way Azure Storage sends them.

Used by tests, the demo and benchmarks to deliver real-shaped events for blobs that
deltalake wrote to Azurite (which emits no events of its own).
"""

from __future__ import annotations

from urllib.parse import quote

from shared.replication.events import blob_created_envelope


def blob_url(account: str, container: str, blob: str, *, azurite_port: int | None = None, dfs: bool = False) -> str:
    """Azure-style URL, or Azurite path-style when `azurite_port` is given."""
    path = f"{quote(container)}/{quote(blob)}"
    if azurite_port is not None:
        return f"http://127.0.0.1:{azurite_port}/{account}/{path}"
    return f"https://{account}.{'dfs' if dfs else 'blob'}.core.windows.net/{path}"


def blob_created_event(account: str, container: str, blob: str, *, size: int = 0, etag: str = "0x0",
                       azurite_port: int | None = None, api: str = "PutBlob", dfs: bool = False) -> dict:
    """An Event Grid-schema Microsoft.Storage.BlobCreated event."""
    url = blob_url(account, container, blob, azurite_port=azurite_port, dfs=dfs)
    return blob_created_envelope(account, url, container, blob, size=size, etag=etag, api=api)


def blob_renamed_event(account: str, container: str, source_blob: str, blob: str, *,
                       azurite_port: int | None = None) -> dict:
    """An Event Grid-schema Microsoft.Storage.BlobRenamed event (ADLS Gen2 rename)."""
    event = blob_created_event(account, container, blob, azurite_port=azurite_port, api="RenameFile", dfs=True)
    event["eventType"] = "Microsoft.Storage.BlobRenamed"
    data = event["data"]
    data["sourceUrl"] = blob_url(account, container, source_blob, azurite_port=azurite_port, dfs=True)
    data["destinationUrl"] = data.pop("url")
    return event


def log_blob_events(container_client, account: str, table_path: str, *, azurite_port: int | None = None,
                    start_after: str | None = None, seen: set | None = None) -> list[dict]:
    """BlobCreated events for the blobs now in a table's `_delta_log/`, in name order.

    `start_after` skips names up to it; `seen` (a set of (name, etag), updated here) skips
    blobs already reported, which also catches a checkpoint that sorts before its commit.
    """
    prefix = f"{table_path.strip('/')}/_delta_log/"
    events = []
    for blob in container_client.list_blobs(name_starts_with=prefix):
        if start_after is not None and blob.name <= start_after:
            continue
        if seen is not None:
            if (blob.name, blob.etag) in seen:
                continue
            seen.add((blob.name, blob.etag))
        events.append(blob_created_event(account, container_client.container_name, blob.name, size=blob.size,
                                         etag=blob.etag, azurite_port=azurite_port))
    return events
