"""TableStore over azure-storage-blob (works on flat and hierarchical-namespace accounts).

The one implementation of `shared.storage.table_store.TableStore` (and its maintenance surface);
copying a file between two stores is `blob_copy.BlobCopier`'s, signing a copy source is
`signing.SourceSigner`'s. Built only by `shared.storage.factory.Stores`.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from shared.errors import DataFileMissing
from shared.storage.blob_copy import SMALL_FILE_BYTES, STREAM_BLOCK_BYTES, BlobCopier  # noqa: F401 - re-exported
from shared.storage.errors import storage_errors
from shared.storage.signing import SAS_LIFETIME, SourceSigner, sas_lifetime, sas_permissions  # noqa: F401 - re-exported
from shared.storage.table_store import LAST_CHECKPOINT, LOG_DIR, LastCheckpoint, LogEntry


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
        self._base = f"{self.root}/" if self.root else ""  # "" : the whole container (a group without a prefix)
        self.label = label
        self.account_name = service.account_name
        self.connection_name = connection_name
        self.description = f"{label} ({connection_name}:{container}/{self.root})"
        self._signer = SourceSigner(service)
        self._copier = BlobCopier(self)

    # -- names ------------------------------------------------------------------
    def _log_blob(self, name: str) -> str:
        return f"{self._base}{LOG_DIR}/{name}"

    def _file_blob(self, path: str) -> str:
        return f"{self._base}{path}"

    @contextlib.contextmanager
    def _storage(self, what: str):
        """Map transport and service failures to ours, one policy per status (shared.storage.errors)."""
        with storage_errors(connection=self.connection_name, subject=self.description, what=what,
                            passthrough=(ResourceNotFoundError, ResourceExistsError, ResourceModifiedError)):
            yield

    # -- log ----------------------------------------------------------------------
    def list_log(self, prefix: str = "", *, limit: int | None = None) -> list[LogEntry]:
        base = f"{self._base}{LOG_DIR}/"
        with self._storage("listing _delta_log"):
            try:
                if limit is None:
                    blobs = list(self._container.list_blobs(name_starts_with=base + prefix))
                else:  # one page: the oldest `limit` entries (names sort by version)
                    pages = self._container.list_blobs(name_starts_with=base + prefix, results_per_page=limit).by_page()
                    blobs = list(next(pages, []))
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
        base = f"{self._base}{LOG_DIR}/"
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

    def get_log_range(self, name: str, offset: int, length: int) -> tuple[bytes, int] | None:
        """(bytes `offset`..`offset+length` of `_delta_log/<name>`, the file's size), or None when absent."""
        blob = self._container.get_blob_client(self._log_blob(name))
        with self._storage(f"reading _delta_log/{name}"):
            try:
                downloader = blob.download_blob(offset=offset, length=length)
                data = downloader.readall()
            except ResourceNotFoundError:
                return None
        # A ranged GET's own size is the range's; the file's is after the "/" of Content-Range.
        whole = downloader.properties.content_range
        return data, int(whole.rsplit("/", 1)[1]) if whole and "/" in whole else downloader.properties.size

    def _upload(self, blob, data: bytes, what: str, **options) -> bool:
        """Upload (the container created first if it is missing); False when a condition refused it
        (the blob exists and may not be overwritten, or changed since read): nothing written."""
        with self._storage(what):
            try:
                try:
                    blob.upload_blob(data, **options)
                except ResourceNotFoundError:
                    self.ensure_container()
                    blob.upload_blob(data, **options)
            except (ResourceExistsError, ResourceModifiedError):
                return False
        return True

    def _create_blob(self, blob_name: str, data: bytes, what: str) -> bool:
        """Create a blob of this container only if absent (the container too if missing): True if
        created, False if it existed (nothing written)."""
        return self._upload(self._container.get_blob_client(blob_name), data, what, overwrite=False)

    def create_log_file(self, name: str, data: bytes) -> bool:
        return self._create_blob(self._log_blob(name), data, f"writing _delta_log/{name}")

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
        if replace_etag is None:
            return self._upload(blob, data, "writing _last_checkpoint", overwrite=False)
        # The one overwrite replication does: only moving _last_checkpoint forward, and only if
        # nobody changed it since we read it.
        return self._upload(blob, data, "writing _last_checkpoint", overwrite=True, etag=replace_etag,
                            match_condition=MatchConditions.IfNotModified)

    # -- whole-table operations (maintenance: snapshots, retention) ------------------
    def list_files(self, prefix: str = "") -> list[LogEntry]:
        """Every blob under the table root (paths relative to it), in name order."""
        base = self._base
        with self._storage("listing the table"):
            try:
                blobs = list(self._container.list_blobs(name_starts_with=base + prefix))
            except ResourceNotFoundError:
                return []
        return [LogEntry(b.name[len(base):], b.size, b.last_modified) for b in blobs]

    def list_subfolders(self) -> list[str]:
        """Names of the folders directly under the table root."""
        base = self._base
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
        return BlobTableStore(self._service, self.container, f"{self._base}{folder}", label=label or self.label,
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

    def iter_file(self, path: str) -> Iterator[bytes]:
        """The bytes of table-relative `path`, chunk by chunk (one chunk in memory at a time).

        Raises:
            DataFileMissing: the file does not exist.
        """
        downloader = self._open_download(path)
        with self._storage(f"reading {path}"):
            yield from downloader.chunks()

    def digest(self, path: str) -> tuple[int, str]:
        """(size, MD5 hex) of table-relative `path`, streamed (rejoin's copy check, `cli verify`).

        Raises:
            DataFileMissing: the file does not exist.
        """
        md5 = hashlib.md5()  # noqa: S324 - a content check, not security
        size = 0
        for chunk in self.iter_file(path):
            md5.update(chunk)
            size += len(chunk)
        return size, md5.hexdigest()

    def put_file(self, path: str, data: bytes, *, overwrite: bool = False) -> bool:
        """Write table-relative `path` (manifests, markers: never a table's data or log).

        Returns False when it exists and `overwrite` is False (nothing written)."""
        if not overwrite:
            return self._create_blob(self._file_blob(path), data, f"writing {path}")
        blob = self._container.get_blob_client(self._file_blob(path))
        return self._upload(blob, data, f"writing {path}", overwrite=True)

    def first_file(self, prefix: str = "") -> LogEntry | None:
        """The first blob under `<root>/<prefix>` in name order (one single-result listing), or None."""
        base = self._base
        with self._storage("listing the table"):
            try:
                for page in self._container.list_blobs(name_starts_with=base + prefix, results_per_page=1).by_page():
                    for b in page:
                        return LogEntry(b.name[len(base):], b.size, b.last_modified)
                    return None
            except ResourceNotFoundError:
                return None
        return None

    def delete_last_checkpoint(self, etag: str) -> bool:
        """Delete `_delta_log/_last_checkpoint` only if it is still `etag` (rejoin's repair);
        False when it is gone or was replaced since."""
        blob = self._container.get_blob_client(self._log_blob(LAST_CHECKPOINT))
        with self._storage("deleting _last_checkpoint"):
            try:
                blob.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
            except (ResourceNotFoundError, ResourceModifiedError):
                return False
        return True

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

    def _open_download(self, path: str):
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
        return self._copier.copy_file(source, path, expected_size=expected_size, bulk=bulk, probe=probe)

    def copy_log_file_from(self, source: "BlobTableStore", name: str, *, expected_size: int | None = None) -> int:
        return self._copier.copy_log_file(source, name, expected_size=expected_size)

    def streams_from(self, source: "BlobTableStore") -> bool:
        """Whether this store's copies from `source` stream through this process (Copy Blob was
        refused between them); the benchmarks report it."""
        return not self._copier._may_copy_server_side(source)

    def ensure_container(self) -> None:
        """Create the store's container if it does not exist (a consolidation target's first run)."""
        with self._storage("creating the container"):
            try:
                self._container.create_container()
            except ResourceExistsError:
                pass

