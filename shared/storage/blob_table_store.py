"""TableStore over azure-storage-blob (works on flat and hierarchical-namespace accounts).

Data files are copied server-side (Copy Blob from the source URL with a read-only SAS
scoped to that one blob, valid as long as the copy needs) and fall back to streaming
through this process when the service cannot reach the source (for example two separate
Azurite processes) or no narrow credential exists (a SAS connection string). Log files
other than commits are always streamed, so they appear on a replica only complete.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlparse

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import (
    BlobBlock,
    BlobSasPermissions,
    BlobServiceClient,
    generate_blob_sas,
)

from shared.delta.log import LAST_CHECKPOINT, LOG_DIR
from shared.errors import DataFileMissing, ReplicaDiverged, ReplicaUnreachable
from shared.storage.errors import storage_errors
from shared.storage.table_store import LastCheckpoint, LogEntry

log = logging.getLogger(__name__)

SAS_LIFETIME = timedelta(minutes=10)
STREAM_BLOCK_BYTES = 8 * 1024 * 1024  # the clients' max_chunk_get_size: one block per chunk
# Small files go through the function (one GET, one conditional PUT, done when it returns);
# cross-account Copy Blob is asynchronous and may need status polling, which costs more
# than it saves below a few MiB.
SMALL_FILE_BYTES = 4 * 1024 * 1024
# Server-side copies take their source SAS lifetime from the file's size at this assumed
# worst-case rate, so a large copy is never cut off by its own credential.
_SLOWEST_COPY_BYTES_PER_SECOND = 8 * 1024 * 1024
_MAX_SAS_LIFETIME = timedelta(hours=24)
_CLOCK_SKEW = timedelta(minutes=5)
_COPY_POLL_SECONDS = 0.2
# Error codes meaning "the service could not read the source URL" rather than "no source".
_SOURCE_UNREACHABLE_CODES = {"CannotVerifyCopySource", "CopySourceCannotBeReached"}


def sas_lifetime(size: int | None) -> timedelta:
    """How long a copy source SAS stays valid: long enough for the copy at a slow rate, at least 10 minutes."""
    if not size:
        return SAS_LIFETIME
    needed = timedelta(seconds=size / _SLOWEST_COPY_BYTES_PER_SECOND) + SAS_LIFETIME
    return min(max(SAS_LIFETIME, needed), _MAX_SAS_LIFETIME)


class _SourceSigner:
    """Makes read-only, one-blob, time-limited SAS URLs for server-side copy from an account.

    Derived from the account key or a user-delegation key. A SAS connection string's own
    token is never forwarded (it may be account-wide, writable and long-lived): such
    sources are streamed through this process instead.
    """

    def __init__(self, service: BlobServiceClient) -> None:
        self._service = service
        self._lock = threading.Lock()
        self._delegation_key = None
        self._delegation_expiry: datetime | None = None

    def signed_url(self, container: str, blob: str, *, lifetime: timedelta = SAS_LIFETIME) -> str | None:
        """A URL carrying a read-only SAS for this one blob, or None when none can be derived."""
        client = self._service.get_blob_client(container, blob)
        credential = self._service.credential
        now = datetime.now(timezone.utc)
        common = dict(
            account_name=self._service.account_name,
            container_name=container,
            blob_name=blob,
            permission=BlobSasPermissions(read=True),
            start=now - _CLOCK_SKEW,
            expiry=now + lifetime,
        )
        account_key = getattr(credential, "account_key", None)
        if account_key:
            return f"{client.url.split('?')[0]}?{generate_blob_sas(account_key=account_key, **common)}"
        if hasattr(credential, "get_token"):
            key = self._user_delegation_key(now, lifetime)
            return f"{client.url.split('?')[0]}?{generate_blob_sas(user_delegation_key=key, **common)}"
        return None  # a SAS connection string: nothing narrower can be derived from it

    def _user_delegation_key(self, now: datetime, lifetime: timedelta):
        # One key serves many SAS tokens; a SAS cannot outlive the key that signed it.
        with self._lock:
            needed = now + lifetime + timedelta(minutes=30)
            if self._delegation_key is None or self._delegation_expiry < needed:
                expiry = max(now + timedelta(hours=2), needed)
                self._delegation_key = self._service.get_user_delegation_key(now - _CLOCK_SKEW, expiry)
                self._delegation_expiry = expiry
            return self._delegation_key


def sas_permissions(url: str) -> tuple[str | None, str | None]:
    """(`sp`, `sr`) of a SAS URL, for tests and diagnostics; (None, None) without a SAS."""
    query = parse_qs(urlparse(url).query)
    return (query.get("sp", [None])[0], query.get("sr", [None])[0])


class BlobTableStore:
    """A Delta table at `<container>/<root>` in one storage account.

    Args:
        service: a client for the account (reused across invocations).
        container: the container name.
        root: the table's folder inside the container.
        label: a name for logs and errors (the replica name or "source"); never a secret.
        connection_name: the connection *name*, for messages.
    """

    def __init__(self, service: BlobServiceClient, container: str, root: str, *, label: str, connection_name: str) -> None:
        self._service = service
        self._container = service.get_container_client(container)
        self.container = container
        self.root = root.strip("/")
        self.label = label
        self.account_name = service.account_name
        self.connection_name = connection_name
        self.description = f"{label} ({connection_name}:{container}/{self.root})"
        self._signer = _SourceSigner(service)
        self._streaming_from: set[str] = set()
        self._lock = threading.Lock()

    # -- names ------------------------------------------------------------------
    def _log_blob(self, name: str) -> str:
        return f"{self.root}/{LOG_DIR}/{name}"

    def _file_blob(self, path: str) -> str:
        return f"{self.root}/{path}"

    @contextlib.contextmanager
    def _storage(self, what: str):
        """Map transport and service failures to ours, one policy per status (shared.storage.errors)."""
        with storage_errors(connection=self.connection_name, subject=self.description, what=what,
                            passthrough=(ResourceNotFoundError, ResourceExistsError, ResourceModifiedError)):
            yield

    # -- log ----------------------------------------------------------------------
    def list_log(self, prefix: str = "") -> list[LogEntry]:
        base = f"{self.root}/{LOG_DIR}/"
        with self._storage("listing _delta_log"):
            try:
                blobs = list(self._container.list_blobs(name_starts_with=base + prefix))
            except ResourceNotFoundError:
                return []  # container absent: an empty replica
        return [
            LogEntry(b.name[len(base):], b.size, b.last_modified,
                     bytes(b.content_settings.content_md5) if b.content_settings.content_md5 else None)
            for b in blobs
            if b.name.startswith(base)
        ]

    def log_entry(self, name: str) -> LogEntry | None:
        """Properties of `_delta_log/<name>` (one HEAD request), or None when absent."""
        blob = self._container.get_blob_client(self._log_blob(name))
        with self._storage(f"reading properties of _delta_log/{name}"):
            try:
                props = blob.get_blob_properties()
            except ResourceNotFoundError:
                return None
        md5 = props.content_settings.content_md5
        return LogEntry(name, props.size, props.last_modified, bytes(md5) if md5 else None)

    def log_exists(self) -> bool:
        """Whether `_delta_log/` holds any blob (one single-result listing)."""
        base = f"{self.root}/{LOG_DIR}/"
        with self._storage("listing _delta_log"):
            try:
                for _ in self._container.list_blobs(name_starts_with=base, results_per_page=1).by_page():
                    for _blob in _:
                        return True
                    return False
            except ResourceNotFoundError:
                return False
        return False

    def get_log_file(self, name: str) -> bytes:
        return self.get_file(f"{LOG_DIR}/{name}")

    def create_log_file(self, name: str, data: bytes) -> bool:
        blob = self._container.get_blob_client(self._log_blob(name))
        with self._storage(f"writing _delta_log/{name}"):
            try:
                blob.upload_blob(data, overwrite=False)
            except ResourceExistsError:
                return False
            except ResourceNotFoundError:
                self._ensure_container()
                try:
                    blob.upload_blob(data, overwrite=False)
                except ResourceExistsError:
                    return False
        return True

    def get_last_checkpoint(self) -> LastCheckpoint | None:
        blob = self._container.get_blob_client(self._log_blob(LAST_CHECKPOINT))
        with self._storage("reading _last_checkpoint"):
            try:
                downloader = blob.download_blob()
            except ResourceNotFoundError:
                return None
            return LastCheckpoint(downloader.readall(), downloader.properties.etag)

    def put_last_checkpoint(self, data: bytes, *, replace_etag: str | None) -> bool:
        blob = self._container.get_blob_client(self._log_blob(LAST_CHECKPOINT))
        with self._storage("writing _last_checkpoint"):
            try:
                if replace_etag is None:
                    blob.upload_blob(data, overwrite=False)
                else:
                    # The one overwrite replication does: only moving _last_checkpoint forward,
                    # and only if nobody changed it since we read it.
                    blob.upload_blob(data, overwrite=True, etag=replace_etag,
                                     match_condition=MatchConditions.IfNotModified)
            except (ResourceExistsError, ResourceModifiedError):
                return False
        return True

    # -- whole-table operations (maintenance: snapshots, retention) ------------------
    def list_files(self, prefix: str = "") -> list[LogEntry]:
        """Every blob under the table root (paths relative to it), in name order."""
        base = f"{self.root}/"
        with self._storage("listing the table"):
            try:
                blobs = list(self._container.list_blobs(name_starts_with=base + prefix))
            except ResourceNotFoundError:
                return []
        return [LogEntry(b.name[len(base):], b.size, b.last_modified) for b in blobs]

    def list_subfolders(self) -> list[str]:
        """Names of the folders directly under the table root."""
        base = f"{self.root}/"
        with self._storage("listing folders"):
            try:
                items = list(self._container.walk_blobs(name_starts_with=base, delimiter="/"))
            except ResourceNotFoundError:
                return []
        return sorted(i.name[len(base):].rstrip("/") for i in items if i.name.endswith("/"))

    def delete_files(self, paths: list[str]) -> int:
        """Delete table-relative files; succeeds for files already gone. Returns how many existed.

        Only the retention path (retention.py, snapshots.py) calls this.
        """
        deleted = 0
        for path in paths:
            blob = self._container.get_blob_client(self._file_blob(path))
            with self._storage(f"deleting {path}"):
                try:
                    blob.delete_blob()
                    deleted += 1
                except ResourceNotFoundError:
                    pass
        return deleted

    def child(self, folder: str, *, label: str | None = None) -> "BlobTableStore":
        """A store rooted at `<root>/<folder>` in the same container."""
        return BlobTableStore(self._service, self.container, f"{self.root}/{folder}", label=label or self.label,
                              connection_name=self.connection_name)

    # -- files --------------------------------------------------------------------
    def file_size(self, path: str) -> int | None:
        blob = self._container.get_blob_client(self._file_blob(path))
        with self._storage(f"reading properties of {path}"):
            try:
                return blob.get_blob_properties().size
            except ResourceNotFoundError:
                return None

    def get_file(self, path: str) -> bytes:
        blob = self._container.get_blob_client(self._file_blob(path))
        with self._storage(f"reading {path}"):
            try:
                return blob.download_blob(max_concurrency=4).readall()
            except ResourceNotFoundError as err:
                raise FileNotFoundError(f"{self.description}: {path} does not exist") from err

    def signed_read_url(self, path: str, *, size: int | None = None) -> str | None:
        """A URL another account can copy `path` from, read-only for this one blob and valid
        long enough for a copy of `size` bytes. Carries a SAS: never log it. None when no
        narrow credential can be derived (a SAS connection string)."""
        return self._signer.signed_url(self.container, self._file_blob(path), lifetime=sas_lifetime(size))

    @property
    def location_key(self) -> tuple[str, str, str]:
        """(account, container, table path): what a lease on this location is named after."""
        return self.account_name, self.container, self.root

    def read_log_file_into(self, name: str, fileobj) -> int:
        """Stream `_delta_log/<name>` into `fileobj` chunk by chunk; returns its size.

        Raises:
            FileNotFoundError: the log file does not exist.
        """
        blob = self._container.get_blob_client(self._log_blob(name))
        with self._storage(f"reading _delta_log/{name}"):
            try:
                downloader = blob.download_blob(max_concurrency=1)
            except ResourceNotFoundError as err:
                raise FileNotFoundError(f"{self.description}: _delta_log/{name} does not exist") from err
            return downloader.readinto(fileobj)

    def open_download(self, path: str):
        blob = self._container.get_blob_client(self._file_blob(path))
        with self._storage(f"reading {path}"):
            try:
                # One connection, chunk by chunk: parallel download would buffer ahead.
                return blob.download_blob(max_concurrency=1)
            except ResourceNotFoundError as err:
                raise DataFileMissing(
                    f"{self.description}: {path} is missing; a commit references it. If the "
                    "primary was vacuumed past this version, re-seed the replica."
                ) from err

    def copy_file_from(self, source: "BlobTableStore", path: str, *, expected_size: int | None = None,
                       bulk: bool = False, probe: bool = False) -> int:
        dst = self._container.get_blob_client(self._file_blob(path))
        if probe:
            # Likely there already (history whose files a seed copied): one HEAD answers,
            # where a copy attempt would read, send and then fail.
            with self._storage(f"checking {path}"):
                try:
                    props = dst.get_blob_properties()
                except ResourceNotFoundError:
                    pass
                else:
                    return self._check_existing(source, dst, path, expected_size, props=props)
        # Latency path (one commit): small files stream, done when the PUT returns. Bulk path
        # (catch-up, seeding): one Copy Blob request per file halves the requests sent.
        small = not bulk and expected_size is not None and expected_size <= SMALL_FILE_BYTES
        if not small and self._may_copy_server_side(source):
            url = source.signed_read_url(path, size=expected_size)
            if url is None:
                self._stream_from(source, "no read-only single-blob credential can be derived from a SAS "
                                          "connection string")
            else:
                copied = self._server_side_copy(source, dst, url, path, expected_size)
                if copied is not None:
                    return copied
        return self._stream_copy(source, dst, path, expected_size)

    def copy_log_file_from(self, source: "BlobTableStore", name: str, *, expected_size: int | None = None) -> int:
        """Copy `_delta_log/<name>` so that it appears only complete: one conditional PUT, or a
        streamed block list committed once. Never an asynchronous Copy Blob, whose pending
        destination is already listed and would let a reader open a partial checkpoint."""
        path = f"{LOG_DIR}/{name}"
        dst = self._container.get_blob_client(self._file_blob(path))
        return self._stream_copy(source, dst, path, expected_size)

    def _source_key(self, source: "BlobTableStore") -> str:
        return source.account_name + "|" + source._service.url.split("?")[0]

    def _may_copy_server_side(self, source: "BlobTableStore") -> bool:
        with self._lock:
            return self._source_key(source) not in self._streaming_from

    def _stream_from(self, source: "BlobTableStore", reason: str) -> None:
        """From now on stream from `source`; said once per source in the log."""
        with self._lock:
            first = self._source_key(source) not in self._streaming_from
            self._streaming_from.add(self._source_key(source))
        if first:
            log.info("copy.streaming replica=%s source_account=%s reason=%s", self.label, source.account_name,
                     reason, extra={"replica": self.label, "source_account": source.account_name})

    def _server_side_copy(self, source, dst, url: str, path: str, expected_size: int | None) -> int | None:
        with self._storage(f"copying {path}"):
            try:
                try:
                    result = dst.start_copy_from_url(url, match_condition=MatchConditions.IfMissing)
                except ResourceNotFoundError as err:
                    if err.error_code == "ContainerNotFound":
                        self._ensure_container()
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
        return expected_size if expected_size is not None else (self.file_size(path) or 0)

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
                    f"{self.description}: server-side copy of {path} {status}; it will be retried."
                )
            if time.monotonic() > deadline:
                raise ReplicaUnreachable(
                    f"{self.description}: server-side copy of {path} still pending after its source "
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
            return self._stream_copy(source, dst, path, expected_size)
        want = expected_size if expected_size is not None else source.file_size(path)
        if want is not None and props.size != want:
            raise ReplicaDiverged(
                f"{self.description}: {path} already exists with {props.size} bytes but the primary's "
                f"has {want}; the replica has diverged. It will not be overwritten: inspect both and "
                "restore the replica from a snapshot."
            )
        return 0

    def _stream_copy(self, source: "BlobTableStore", dst, path: str, expected_size: int | None) -> int:
        """Download and upload through this process, one 8 MiB block in flight at a time.

        Memory stays bounded by the block size whatever the file size; the blob appears only
        at the final Put Block List, which is conditional on it not existing yet.
        """
        downloader = source.open_download(path)
        size = downloader.size
        with self._storage(f"uploading {path}"):
            try:
                if size <= STREAM_BLOCK_BYTES:
                    data = downloader.readall()
                    try:
                        dst.upload_blob(data, overwrite=False)
                    except ResourceNotFoundError:
                        self._ensure_container()
                        dst.upload_blob(data, overwrite=False)
                else:
                    self._ensure_container()
                    blocks = []
                    for index, chunk in enumerate(downloader.chunks()):
                        block_id = base64.b64encode(f"{index:08d}".encode()).decode()
                        dst.stage_block(block_id, chunk, length=len(chunk))
                        blocks.append(BlobBlock(block_id=block_id))
                    dst.commit_block_list(blocks, match_condition=MatchConditions.IfMissing)
            except ResourceExistsError:
                existing = dst.get_blob_properties()
                if existing.copy and existing.copy.status in ("failed", "aborted"):
                    raise ReplicaUnreachable(
                        f"{self.description}: {path} holds a failed copy again; it will be retried."
                    ) from None
                return self._check_existing(source, dst, path, expected_size, props=existing)
        return size

    def _ensure_container(self) -> None:
        with self._storage("creating the container"):
            try:
                self._container.create_container()
            except ResourceExistsError:
                pass

