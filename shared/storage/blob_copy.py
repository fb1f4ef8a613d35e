"""Copying one file between two stores: server-side when the service can reach the source,
else streamed through this process in bounded blocks; never overwriting what is there.

Data files are copied server-side (Copy Blob from the source URL with a read-only SAS scoped to
that one blob, valid as long as the copy needs) and fall back to streaming when the service
cannot reach the source (two separate Azurite processes) or no narrow credential exists (a SAS
connection string). Log files are always streamed, so they appear on a replica only complete.
One copier belongs to one destination store (composition: the store owns it; it reaches the
store's container, which never leaves shared/storage).
"""

from __future__ import annotations

import base64
import logging
import threading
import time

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobBlock

from shared.errors import DataFileMissing, ReplicaDiverged, ReplicaUnreachable
from shared.storage.signing import sas_lifetime
from shared.storage.table_store import LOG_DIR

log = logging.getLogger("shared.storage.blob_table_store")  # the copy's log lines, where they always were

STREAM_BLOCK_BYTES = 8 * 1024 * 1024  # the clients' max_chunk_get_size: one block per chunk
# Small files go through the function (one GET, one conditional PUT, done when it returns);
# cross-account Copy Blob is asynchronous and may need status polling, which costs more
# than it saves below a few MiB.
SMALL_FILE_BYTES = 4 * 1024 * 1024
_COPY_POLL_SECONDS = 0.2
# Error codes meaning "the service could not read the source URL" rather than "no source".
_SOURCE_UNREACHABLE_CODES = {"CannotVerifyCopySource", "CopySourceCannotBeReached"}


class BlobCopier:
    """Copies into one destination store (`store`), remembering which sources must be streamed."""

    def __init__(self, store) -> None:
        self._store = store
        self._streaming_from: set[str] = set()
        self._lock = threading.Lock()

    def copy_file(self, source, path: str, *, expected_size: int | None = None, bulk: bool = False,
                  probe: bool = False) -> int:
        """Copy table-relative `path` from `source` (another store) into this copier's store."""
        # Latency path (one commit): small files stream, done when the PUT returns. Bulk path
        # (catch-up, seeding): one Copy Blob request per file halves the requests sent.
        small = not bulk and expected_size is not None and expected_size <= SMALL_FILE_BYTES
        # The SDK's blob client only where its requests are sent: building one costs more CPU than
        # a small file's whole copy through obstore.
        if probe:
            # Likely there already (history whose files a seed copied): one HEAD answers,
            # where a copy attempt would read, send and then fail.
            dst = self._dst(path)
            with self._store._storage(f"checking {path}"):
                try:
                    props = dst.get_blob_properties()
                except ResourceNotFoundError:
                    pass
                else:
                    return self._check_existing(source, dst, path, expected_size, props=props)
        if not small and self._may_copy_server_side(source):
            url = source.signed_read_url(path, size=expected_size)
            if url is None:
                self._stream_from(source, "no read-only single-blob credential can be derived from a SAS "
                                          "connection string")
            else:
                copied = self._server_side_copy(source, self._dst(path), url, path, expected_size)
                if copied is not None:
                    return copied
        return self._stream_copy(source, path, expected_size)

    def _dst(self, path: str):
        return self._store._container.get_blob_client(self._store._file_blob(path))

    def copy_log_file(self, source, name: str, *, expected_size: int | None = None) -> int:
        """Copy `_delta_log/<name>` so that it appears only complete: one conditional PUT, or a
        streamed block list committed once. Never an asynchronous Copy Blob, whose pending
        destination is already listed and would let a reader open a partial checkpoint."""
        path = f"{LOG_DIR}/{name}"
        return self._stream_copy(source, path, expected_size)

    def _source_key(self, source) -> str:
        return source.account_name + "|" + source._service.url.split("?")[0]

    def _may_copy_server_side(self, source) -> bool:
        with self._lock:
            return self._source_key(source) not in self._streaming_from

    def _stream_from(self, source, reason: str) -> None:
        """From now on stream from `source`; said once per source in the log."""
        with self._lock:
            first = self._source_key(source) not in self._streaming_from
            self._streaming_from.add(self._source_key(source))
        if first:
            log.info("copy.streaming replica=%s source_account=%s reason=%s", self._store.label, source.account_name,
                     reason, extra={"replica": self._store.label, "source_account": source.account_name})

    def _server_side_copy(self, source, dst, url: str, path: str, expected_size: int | None) -> int | None:
        with self._store._storage(f"copying {path}"):
            try:
                try:
                    result = dst.start_copy_from_url(url, match_condition=MatchConditions.IfMissing)
                except ResourceNotFoundError as err:
                    if err.error_code == "ContainerNotFound":
                        self._store.ensure_container()
                        result = dst.start_copy_from_url(url, match_condition=MatchConditions.IfMissing)
                    else:
                        raise
            except ResourceExistsError:
                return self._check_existing(source, dst, path, expected_size)
            except HttpResponseError as err:
                if getattr(err, "error_code", None) in _SOURCE_UNREACHABLE_CODES or err.status_code == 404:
                    if source.file_size(path) is None:
                        raise DataFileMissing(
                            f"{source.description}: {path} is missing on the primary; a commit references it. "
                            "If the primary was vacuumed past this version, re-seed the replica."
                        ) from err
                    self._stream_from(source, str(err.error_code))
                    return None
                raise
            if result.get("copy_status") != "success":
                self._wait_for_copy(dst, path, expected_size)
        return expected_size if expected_size is not None else (self._store.file_size(path) or 0)

    def _wait_for_copy(self, dst, path: str, expected_size: int | None) -> None:
        """Poll a pending copy, for at most as long as its source SAS is valid."""
        deadline = time.monotonic() + sas_lifetime(expected_size).total_seconds()
        delay = _COPY_POLL_SECONDS
        while True:
            status = dst.get_blob_properties().copy.status
            if status == "success":
                return
            if status in ("failed", "aborted"):
                raise ReplicaUnreachable(
                    f"{self._store.description}: server-side copy of {path} {status}; it will be retried."
                )
            if time.monotonic() > deadline:
                raise ReplicaUnreachable(
                    f"{self._store.description}: server-side copy of {path} still pending after its source "
                    "credential expired; it will be retried."
                )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _check_existing(self, source, dst, path: str, expected_size: int | None, *, props=None) -> int:
        """A blob already exists at `path` (`props`, when just read): a finished or running copy
        of ours, or a conflict."""
        props = props or dst.get_blob_properties()
        status = props.copy.status if props.copy else None
        if status == "pending":
            self._wait_for_copy(dst, path, expected_size)
            props = dst.get_blob_properties()
        elif status in ("failed", "aborted"):
            # A failed copy leaves an unusable blob; replacing it (only if unchanged) loses
            # nothing. The replacement streams: no second SAS that could expire again.
            dst.delete_blob(etag=props.etag, match_condition=MatchConditions.IfNotModified)
            return self._stream_copy(source, path, expected_size)
        want = expected_size if expected_size is not None else source.file_size(path)
        if want is not None and props.size != want:
            raise ReplicaDiverged(
                f"{self._store.description}: {path} already exists with {props.size} bytes but the primary's "
                f"has {want}; the replica has diverged. It will not be overwritten: inspect both and "
                "restore the replica from a snapshot."
            )
        return 0

    def _stream_copy(self, source, path: str, expected_size: int | None) -> int:
        """Download and upload through this process, one 8 MiB block in flight at a time.

        Memory stays bounded by the block size whatever the file size; the blob appears only
        at the final Put Block List, which is conditional on it not existing yet.
        """
        downloader = source._open_download(path)
        size = downloader.size
        if size <= STREAM_BLOCK_BYTES:
            if self._store._create_blob(self._store._file_blob(path), downloader.readall(), f"uploading {path}"):
                return size
            return self._refused(source, path, expected_size)
        dst = self._dst(path)
        with self._store._storage(f"uploading {path}"):
            try:
                self._store.ensure_container()
                blocks = []
                for index, chunk in enumerate(downloader.chunks()):
                    block_id = base64.b64encode(f"{index:08d}".encode()).decode()
                    dst.stage_block(block_id, chunk, length=len(chunk))
                    blocks.append(BlobBlock(block_id=block_id))
                dst.commit_block_list(blocks, match_condition=MatchConditions.IfMissing)
            except ResourceExistsError:
                return self._refused(source, path, expected_size)
        return size

    def _refused(self, source, path: str, expected_size: int | None) -> int:
        """The conditional create found a blob at `path`: ours (complete), a failed copy, or a conflict."""
        dst = self._dst(path)
        with self._store._storage(f"checking {path}"):
            existing = dst.get_blob_properties()
            if existing.copy and existing.copy.status in ("failed", "aborted"):
                raise ReplicaUnreachable(
                    f"{self._store.description}: {path} holds a failed copy again; it will be retried."
                ) from None
            return self._check_existing(source, dst, path, expected_size, props=existing)
