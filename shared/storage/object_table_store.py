"""TableStore whose hot path goes through obstore (Rust object_store), the rest through the SDK.

Heads, commit and file reads (whole, ranged, streamed), conditional creates (commits, small file
copies, markers) are object_store requests (`shared.storage.object_client`): a tenth of the SDK's CPU
each. What object_store cannot do stays on the inherited `BlobTableStore` path, unchanged:
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

import contextlib
import hashlib
from typing import Iterator

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError

from shared.errors import DataFileMissing
from shared.storage.blob_copy import STREAM_BLOCK_BYTES
from shared.storage.blob_table_store import BlobTableStore
from shared.storage.errors import object_store_error
from shared.storage.object_client import ABSENT, ObjectClients
from shared.storage.table_store import LOG_DIR, LogEntry


_CREATE = {"If-None-Match": "*"}  # what mode="create" sends (tests/test_store_conformance.py sees it on the wire)
DIGESTED_COMMIT_BYTES = 1024 * 1024  # commits up to this size get their MD5 from `log_entry`'s GET


class _ObjectDownload:
    """An open GET: its size, then its bytes whole or chunk by chunk (at most one 8 MiB chunk held)."""

    def __init__(self, store: "ObjectTableStore", result, what: str) -> None:
        self._store, self._result, self._what = store, result, what
        self.size = result.meta["size"]

    def readall(self) -> bytes:
        with self._store._reading(self._what):
            return bytes(self._result.bytes())

    def chunks(self) -> Iterator[bytes]:
        with self._store._reading(self._what):
            for chunk in self._result.stream(min_chunk_size=STREAM_BLOCK_BYTES):
                yield bytes(chunk)

    def readinto(self, fileobj) -> int:
        for chunk in self.chunks():
            fileobj.write(chunk)
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

    @contextlib.contextmanager
    def _reading(self, what: str):
        """Failures while reading a response's body (a stream cut mid-way) become ours."""
        try:
            yield
        except ABSENT:
            raise
        except BaseError as err:  # not chained: object_store's message names the URL (maybe a SAS)
            raise object_store_error(err, connection=self.connection_name, subject=self.description,
                                     what=what) from None

    def _head(self, blob: str, what: str):
        """The blob's ObjectMeta, or None when absent."""
        try:
            return self._call("HEAD", blob, what, lambda: obstore.head(self._store, blob),
                              lambda: obstore.head_async(self._store, blob))
        except ABSENT:
            return None

    def _get(self, blob: str, what: str, options: dict | None = None):
        """An open GET (obstore's GetResult), or None when absent."""
        try:
            return self._call("GET", blob, what, lambda: obstore.get(self._store, blob, options=options),
                              lambda: obstore.get_async(self._store, blob, options=options))
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
        result = self._get(self._log_blob(name), what)
        if result is None:
            return None
        meta = result.meta
        if meta["size"] > DIGESTED_COMMIT_BYTES:  # the body is never read: memory stays bounded
            return LogEntry(name, meta["size"], meta["last_modified"])
        with self._reading(what):
            data = bytes(result.bytes())
        return LogEntry(name, len(data), meta["last_modified"], hashlib.md5(data).digest())  # noqa: S324 - content check

    def get_log_file(self, name: str) -> bytes:
        return self.get_file(f"{LOG_DIR}/{name}")

    def get_log_range(self, name: str, offset: int, length: int) -> tuple[bytes, int] | None:
        what = f"reading _delta_log/{name}"
        result = self._get(self._log_blob(name), what, {"range": (offset, offset + length)})
        if result is None:
            return None
        with self._reading(what):
            return bytes(result.bytes()), result.meta["size"]  # meta: the whole file's

    def read_log_file_into(self, name: str, fileobj) -> int:
        what = f"reading _delta_log/{name}"
        result = self._get(self._log_blob(name), what)
        if result is None:
            raise FileNotFoundError(f"{self.description}: _delta_log/{name} does not exist")
        return _ObjectDownload(self, result, what).readinto(fileobj)

    def _create_blob(self, blob_name: str, data: bytes, what: str) -> bool:
        """Create only if absent (If-None-Match: *); the container too when it is missing."""

        def put():
            return self._call("PUT", blob_name, what, lambda: obstore.put(self._store, blob_name, data, mode="create"),
                              lambda: obstore.put_async(self._store, blob_name, data, mode="create"),
                              conditions=_CREATE)

        try:
            try:
                put()
            except ABSENT:  # the container is missing (a new replica's first write)
                self.ensure_container()
                put()
        except AlreadyExistsError:
            return False
        return True

    # -- files --------------------------------------------------------------------------
    def file_size(self, path: str) -> int | None:
        meta = self._head(self._file_blob(path), f"reading properties of {path}")
        return None if meta is None else meta["size"]

    def get_file(self, path: str) -> bytes:
        what = f"reading {path}"
        result = self._get(self._file_blob(path), what)
        if result is None:
            raise FileNotFoundError(f"{self.description}: {path} does not exist")
        with self._reading(what):
            return bytes(result.bytes())

    def _open_download(self, path: str) -> _ObjectDownload:
        what = f"reading {path}"
        result = self._get(self._file_blob(path), what)
        if result is None:
            raise DataFileMissing(
                f"{self.description}: {path} is missing; a commit references it. If the "
                "primary was vacuumed past this version, re-seed the replica."
            )
        return _ObjectDownload(self, result, what)

    def iter_file(self, path: str) -> Iterator[bytes]:
        yield from self._open_download(path).chunks()
