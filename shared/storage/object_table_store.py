"""TableStore whose hot path goes through obstore (Rust object_store), the rest through the SDK.

Heads, reads of commits and files up to 8 MiB (whole or ranged, each body read within its request's
call, so the deadline bounds it), conditional creates (commits, small file copies, markers) are
object_store requests (`shared.storage.object_client`): a tenth of the SDK's CPU each. Larger files
are read through the SDK's chunked download (object_store's timeout covers a whole body, which a
slow multi-GiB stream would exceed). What object_store cannot do stays on the inherited
`BlobTableStore` path, unchanged:
cross-account Copy Blob and its SAS, the copy status of a pending copy, ETag-conditional overwrites
and deletes (`_last_checkpoint`), conditional block lists (files above 8 MiB), listings (they carry
Content-MD5, which the commit comparison uses and object_store's listing does not return) and
container creation.

object_store's HEAD returns no Content-MD5, which the commit comparison (`shared.delta.compare`) uses:
`log_entry` of a commit (`.json`, at most 1 MiB) is therefore a GET whose bytes give the MD5 (one
request, as before); of anything else, a HEAD without MD5 (a comparison then reads the bytes, as it
always has on ADLS accounts).
Built only by `shared.storage.factory.Stores`.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import obstore
from obstore.exceptions import AlreadyExistsError, PreconditionError

from shared.errors import DataFileMissing, ReplicaUnreachable
from shared.storage.blob_copy import STREAM_BLOCK_BYTES
from shared.storage.blob_table_store import BlobTableStore
from shared.storage.object_client import ABSENT, ObjectClients
from shared.storage.table_store import LOG_DIR, LogEntry


_CREATE = {"If-None-Match": "*"}  # what mode="create" sends (tests/test_store_conformance.py sees it on the wire)
DIGESTED_COMMIT_BYTES = 1024 * 1024  # commits up to this size get their MD5 from `log_entry`'s GET
# Bodies up to this size are read inside the request's call (bounded by its timeout and the deadline);
# larger files go through the SDK's chunked download, whose read timeout applies per chunk.
WHOLE_BODY_BYTES = STREAM_BLOCK_BYTES


class _Read:
    """A body read whole within its request: the size, the bytes (None when larger than asked for)."""

    def __init__(self, meta: dict, data: bytes | None) -> None:
        self.meta, self.data = meta, data
        self.size = meta["size"]

    # the downloader interface the copier and `iter_file` use (one chunk: the whole small body)
    def readall(self) -> bytes:
        return self.data

    def chunks(self) -> Iterator[bytes]:
        yield self.data

    def readinto(self, fileobj) -> int:
        fileobj.write(self.data)
        return self.size


class ObjectTableStore(BlobTableStore):
    """A Delta table at `<container>/<root>`: `BlobTableStore`, with its hot path on object_store.

    Args:
        service, container, root, label, connection_name: as `BlobTableStore`.
        objects: the host's obstore clients (one AzureStore per connection and container).
    """

    def __init__(self, service, container: str, root: str, *, label: str, connection_name: str,
                 objects: ObjectClients) -> None:
        super().__init__(service, container, root, label=label, connection_name=connection_name)
        self._objects = objects
        self._store = objects.store(connection_name, container)

    def child(self, folder: str, *, label: str | None = None) -> "ObjectTableStore":
        return ObjectTableStore(self._service, self.container, f"{self._base}{folder}", label=label or self.label,
                                connection_name=self.connection_name, objects=self._objects)

    # -- one request ------------------------------------------------------------------
    def _call(self, method: str, blob: str, what: str, sync, asynchronous, conditions=None):
        return self._objects.call(method, sync, asynchronous, connection=self.connection_name,
                                  container=self.container, blob=blob, subject=self.description, what=what,
                                  conditions=conditions)

    def _head(self, blob: str, what: str):
        """The blob's ObjectMeta, or None when absent."""
        try:
            return self._call("HEAD", blob, what, lambda: obstore.head(self._store, blob),
                              lambda: obstore.head_async(self._store, blob))
        except ABSENT:
            return None

    def _read(self, blob: str, what: str, *, limit: int = WHOLE_BODY_BYTES, options: dict | None = None) -> _Read | None:
        """One GET, its body read within the same call when at most `limit` bytes (else left unread:
        the connection is dropped, memory stays bounded); None when absent."""

        def sync():
            result = obstore.get(self._store, blob, options=options)
            meta = result.meta
            return _Read(meta, bytes(result.bytes()) if meta["size"] <= limit or options else None)

        async def asynchronous():
            result = await obstore.get_async(self._store, blob, options=options)
            meta = result.meta
            return _Read(meta, bytes(await result.bytes_async()) if meta["size"] <= limit or options else None)

        try:
            return self._call("GET", blob, what, sync, asynchronous)
        except ABSENT:
            return None

    # -- log ----------------------------------------------------------------------------
    def log_entry(self, name: str) -> LogEntry | None:
        """A commit's entry carries the MD5 of its bytes: a GET (one request, like the HEAD it replaces)
        whose body is read when the commit is at most 1 MiB. object_store's HEAD returns no Content-MD5,
        and without it every head check (is the replica's head commit the primary's?) would read both
        commits: two more requests per replicated commit."""
        what = f"reading properties of _delta_log/{name}"
        if not name.endswith(".json"):
            meta = self._head(self._log_blob(name), what)
            return None if meta is None else LogEntry(name, meta["size"], meta["last_modified"])
        read = self._read(self._log_blob(name), what, limit=DIGESTED_COMMIT_BYTES)
        if read is None:
            return None
        md5 = None if read.data is None else hashlib.md5(read.data).digest()  # noqa: S324 - content check
        return LogEntry(name, read.size, read.meta["last_modified"], md5)

    def get_log_file(self, name: str) -> bytes:
        return self.get_file(f"{LOG_DIR}/{name}")

    def get_log_range(self, name: str, offset: int, length: int) -> tuple[bytes, int] | None:
        read = self._read(self._log_blob(name), f"reading _delta_log/{name}",
                          options={"range": (offset, offset + length)})
        return None if read is None else (read.data, read.size)  # size: the whole file's

    def read_log_file_into(self, name: str, fileobj) -> int:
        read = self._read(self._log_blob(name), f"reading _delta_log/{name}")
        if read is None:
            raise FileNotFoundError(f"{self.description}: _delta_log/{name} does not exist")
        if read.data is None:  # a large checkpoint: the SDK's chunked download
            return super().read_log_file_into(name, fileobj)
        return read.readinto(fileobj)

    def _create_blob(self, blob_name: str, data: bytes, what: str) -> bool:
        """Create only if absent (If-None-Match: *); the container too when it is missing. False when
        the blob exists (409, or 412 from the condition)."""

        def put():
            self._call("PUT", blob_name, what, lambda: obstore.put(self._store, blob_name, data, mode="create"),
                       lambda: obstore.put_async(self._store, blob_name, data, mode="create"), conditions=_CREATE)

        missing = False
        try:
            put()
            return True
        except (AlreadyExistsError, PreconditionError):
            return False
        except ABSENT:  # the container is missing (a new replica's first write)
            missing = True
        # Outside the handler: nothing raised from here carries obstore's exception as its context.
        if missing:
            self.ensure_container()
            try:
                put()
            except (AlreadyExistsError, PreconditionError):
                return False
            except ABSENT:
                raise ReplicaUnreachable(f"{self.description}: writing {what.split(' ', 1)[-1]} found no "
                                         "container even after creating it; it will be retried.") from None
        return True

    # -- files --------------------------------------------------------------------------
    def file_size(self, path: str) -> int | None:
        meta = self._head(self._file_blob(path), f"reading properties of {path}")
        return None if meta is None else meta["size"]

    def get_file(self, path: str) -> bytes:
        read = self._read(self._file_blob(path), f"reading {path}")
        if read is None:
            raise FileNotFoundError(f"{self.description}: {path} does not exist")
        return read.data if read.data is not None else super().get_file(path)

    def _open_download(self, path: str):
        """A small file read whole (one request); a larger one through the SDK's chunked download (one
        more request, against 8 MiB and up of transfer), whose read timeout applies per chunk."""
        read = self._read(self._file_blob(path), f"reading {path}")
        if read is None:
            raise DataFileMissing(
                f"{self.description}: {path} is missing; a commit references it. If the "
                "primary was vacuumed past this version, re-seed the replica."
            )
        return read if read.data is not None else super()._open_download(path)

    def iter_file(self, path: str) -> Iterator[bytes]:
        yield from self._open_download(path).chunks()
