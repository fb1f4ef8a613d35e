"""The storage boundary: every operation any caller performs on a table location, declared once.

`TableStore` is what replication, reads and consolidation use (Delta-shaped operations on one
location); `MaintenanceStore` adds what maintenance and failover need on whole folders (retention,
snapshots, quarantines, markers). Names in `_delta_log` are relative to `_delta_log/`; file paths
are relative to the store's root. Every implementation passes `tests/test_store_conformance.py`;
stores are built only by `shared.storage.factory.Stores`, and storage SDK failures become the
project's errors in `shared.storage.errors` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterator, Protocol


LOG_DIR = "_delta_log"  # the Delta log's folder under a table root
LAST_CHECKPOINT = "_last_checkpoint"  # the log's pointer to its newest checkpoint


@dataclass(frozen=True)
class LogEntry:
    """One blob in `_delta_log/` as listed: name relative to `_delta_log/`."""

    name: str
    size: int
    last_modified: datetime | None = None
    content_md5: bytes | None = None


@dataclass(frozen=True)
class LastCheckpoint:
    """The `_last_checkpoint` blob's bytes and the ETag to replace it conditionally."""

    data: bytes
    etag: str


class TableStore(Protocol):
    """Storage operations on one Delta table location."""

    #: Human-readable location without secrets, e.g. "westeu:lake/delta/sales".
    description: str

    def list_log(self, prefix: str = "", *, limit: int | None = None) -> list[LogEntry]:
        """Entries of `_delta_log/` whose names start with `prefix`, in name order; empty when none.
        `limit`: only the first that many (one request)."""

    def log_entry(self, name: str) -> LogEntry | None:
        """Properties of one `_delta_log` blob, or None when absent."""

    def log_exists(self) -> bool:
        """Whether `_delta_log/` holds anything at all (one cheap request)."""

    def get_log_file(self, name: str) -> bytes:
        """Bytes of `_delta_log/<name>`. Raises FileNotFoundError when absent."""

    def get_log_range(self, name: str, offset: int, length: int) -> tuple[bytes, int] | None:
        """(up to `length` bytes of `_delta_log/<name>` from `offset`, the file's size), or None when absent."""

    def create_log_file(self, name: str, data: bytes) -> bool:
        """Create `_delta_log/<name>` only if absent: True if created, False if it existed."""

    def get_last_checkpoint(self) -> LastCheckpoint | None:
        """`_last_checkpoint` with its ETag, or None when absent."""

    def put_last_checkpoint(self, data: bytes, *, replace_etag: str | None) -> bool:
        """Write `_last_checkpoint` if absent (`replace_etag` None) or unchanged since read.

        Returns False when another writer got there first (nothing written).
        """

    def file_size(self, path: str) -> int | None:
        """Size of a table-relative file, or None when absent."""

    def get_file(self, path: str) -> bytes:
        """Bytes of a table-relative file. Raises FileNotFoundError when absent."""

    #: (account, container, table path): the location's identity, which its lease is named after.
    location_key: tuple[str, str, str]

    def read_log_file_into(self, name: str, fileobj) -> int:
        """Stream `_delta_log/<name>` into a writable file object; returns its size.

        Raises FileNotFoundError when absent. Memory stays bounded by one chunk.
        """

    def copy_log_file_from(self, source: "TableStore", name: str, *, expected_size: int | None = None) -> int:
        """Copy `_delta_log/<name>` (a checkpoint, sidecar or `.crc`) unless present; bytes copied.

        The file appears on this store only complete (never as a pending asynchronous copy),
        and only if absent. Raises ReplicaDiverged if a different-sized file is there.
        """

    def copy_file_from(self, source: "TableStore", path: str, *, expected_size: int | None = None,
                       bulk: bool = False, probe: bool = False) -> int:
        """Copy `path` from `source` unless present; the bytes copied (0 when it was present).

        `bulk` favours throughput (many files) over the latency of one file; `probe` asks
        first whether it is present (cheaper when it most likely is).

        Never overwrites a complete file. Raises DataFileMissing if the source lacks it and
        ReplicaDiverged if this store holds a different-sized file at `path`.
        """

    def signed_read_url(self, path: str, *, size: int | None = None) -> str | None:
        """A URL another account can copy `path` from: read-only, this one file, short-lived (long
        enough for `size` bytes). Carries a credential: never log it. None when none can be derived."""


class MaintenanceStore(TableStore, Protocol):
    """What maintenance (retention, snapshots) and failover (quarantines, markers) add."""

    #: The store's folder inside its container, and the container.
    root: str
    container: str

    def list_files(self, prefix: str = "") -> list[LogEntry]:
        """Every file under the root (paths relative to it) starting with `prefix`, in name order."""

    def first_file(self, prefix: str = "") -> LogEntry | None:
        """The first file under the root starting with `prefix` (one request), or None."""

    def list_subfolders(self) -> list[str]:
        """Names of the folders directly under the root."""

    def child(self, folder: str, *, label: str | None = None) -> "MaintenanceStore":
        """A store rooted at `<root>/<folder>` in the same container."""

    def iter_file(self, path: str) -> Iterator[bytes]:
        """The bytes of `path`, chunk by chunk. Raises DataFileMissing when absent."""

    def digest(self, path: str) -> tuple[int, str]:
        """(size, MD5 hex) of `path`, streamed. Raises DataFileMissing when absent."""

    def put_file(self, path: str, data: bytes, *, overwrite: bool = False) -> bool:
        """Write `path` (manifests, markers); False when it exists and `overwrite` is False."""

    def delete_files(self, paths: list[str]) -> int:
        """Delete files (only retention, snapshots and rejoin call this); how many existed."""

    def delete_last_checkpoint(self, etag: str) -> bool:
        """Delete `_delta_log/_last_checkpoint` only if still `etag`; False when gone or changed."""

    def ensure_container(self) -> None:
        """Create the container if it does not exist."""
