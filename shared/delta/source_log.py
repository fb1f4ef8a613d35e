"""What one invocation reads from the primary's `_delta_log`, read once and shared by replicas."""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, TypeVar

from shared.config.model import TableConfig
from shared.delta.log import (
    LogFileKind,
    ReferencedFile,
    TableRoot,
    commit_name,
    iter_checkpoint_actions,
    parse_commit,
    parse_log_name,
    referenced_files,
    sidecar_name,
    version_prefix,
)
from shared.delta.commit_digests import CommitDigests
from shared.errors import CommitNotFound, InvalidCommit
from shared.storage.table_store import LogEntry, TableStore

T = TypeVar("T")


def window_prefixes(low: int, high: int, *, most: int = 3) -> list[str]:
    """Few `_delta_log` name prefixes that together cover every version in [low, high].

    Uses the finest decimal windows (10 versions, then 100, ...) that need at most `most`
    listings, so a listing costs O(high - low), also across boundaries like 999 -> 1000
    where a single common prefix would cover the whole log.
    """
    if low > high:
        low, high = high, low
    size = 10
    while high // size - low // size >= most and size < 10**20:
        size *= 10
    digits = 20 - len(str(size)) + 1
    return [version_prefix(w * size)[:digits] for w in range(low // size, high // size + 1)]


def complete_checkpoints(entries: list[LogEntry]) -> dict[int, list[str]]:
    """Version -> names of one complete checkpoint at that version, from a listing.

    A multi-part checkpoint counts only with all its parts (readers must ignore partial
    ones); with several candidates at one version, the classic or v2 file wins.
    """
    parts: dict[tuple[int, int], set[int]] = {}
    names: dict[tuple[int, int], list[str]] = {}
    found: dict[int, list[str]] = {}
    for entry in entries:
        lf = parse_log_name(entry.name)
        if lf is None:
            continue
        if lf.kind in (LogFileKind.CHECKPOINT, LogFileKind.CHECKPOINT_V2):
            found.setdefault(lf.version, [entry.name])
        elif lf.kind == LogFileKind.CHECKPOINT_PART:
            parts.setdefault((lf.version, lf.parts), set()).add(lf.part)
            names.setdefault((lf.version, lf.parts), []).append(entry.name)
    for (version, count), seen in parts.items():
        if len(seen) == count and version not in found:
            found[version] = sorted(names[(version, count)])
    return found


# What one invocation keeps of the primary's commits (bytes and parsed file lists), shared by
# the replicas it updates. Least recently used entries go first; a commit larger than the
# whole budget is never kept. Catch-up batches hold their own references while they need them.
COMMIT_CACHE_BYTES = 8 * 1024 * 1024
_FILE_ENTRY_BYTES = 200  # rough in-memory size of one ReferencedFile beyond its path
SPOOL_BYTES = 8 * 1024 * 1024  # checkpoint files above this spill to a temporary file


@dataclass(frozen=True)
class SourceCommit:
    """One primary commit as read: its exact bytes and the files it references."""

    version: int
    data: bytes
    files: list[ReferencedFile]
    digest: tuple[int, bytes]  # size and MD5 of `data` (CommitDigests.digest), computed once per read

    @property
    def footprint(self) -> int:
        return len(self.data) + sum(_FILE_ENTRY_BYTES + len(f.path) for f in self.files)


class _BoundedCache:
    """Compute-once values under a byte budget, evicting least recently used ones.

    Concurrent callers of one key share one computation. Failures are not kept, so a
    later caller tries again.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._futures: OrderedDict[object, Future] = OrderedDict()
        self._sizes: dict[object, int] = {}
        self._total = 0

    def get(self, key: object, compute: Callable[[], T], size_of: Callable[[T], int]) -> T:
        with self._lock:
            future = self._futures.get(key)
            owner = future is None
            if owner:
                future = self._futures[key] = Future()
            else:
                self._futures.move_to_end(key)
        if owner:
            try:
                value = compute()
            except BaseException as err:  # shared with waiters, re-raised below
                with self._lock:
                    self._futures.pop(key, None)
                future.set_exception(err)
            else:
                future.set_result(value)
                self._admit(key, size_of(value))
        return future.result()

    def _admit(self, key: object, size: int) -> None:
        with self._lock:
            if size > self.budget:
                self._futures.pop(key, None)
                return
            self._sizes[key] = size
            self._total += size
            for old in list(self._futures):
                if self._total <= self.budget:
                    break
                if old in self._sizes and old != key:
                    self._futures.pop(old)
                    self._total -= self._sizes.pop(old)

    def holds(self, key: object) -> bool:
        """A value for `key` is computed and held."""
        with self._lock:
            future = self._futures.get(key)
        return future is not None and future.done() and future.exception() is None

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return self._total


class SourceLog:
    """Thread-safe reads of the primary's log for one invocation, shared by its replicas.

    Listings and small reads are kept for the invocation; commits are kept under
    COMMIT_CACHE_BYTES; checkpoints are streamed and never held. Nothing outlives the
    invocation: a later event re-reads the primary.
    """

    def __init__(self, table: TableConfig, store: TableStore, root: TableRoot, *,
                 commit_cache_bytes: int = COMMIT_CACHE_BYTES, digests: CommitDigests | None = None) -> None:
        self.table = table
        # Digests are remembered only under a known epoch (see at_epoch); until then the
        # ones read are held here (an event reads one commit before the topology is known).
        self._digests = digests
        self._epoch: int | None = None
        self._unfiled: dict[int, tuple[int, bytes]] = {}
        self.store = store
        self.root = root
        self._lock = threading.Lock()
        self._futures: dict[object, Future] = {}
        self._commits = _BoundedCache(commit_cache_bytes)
        self.sizes: dict[str, int] = {}  # `_delta_log` name -> size, from the listings made
        self._checked: set[tuple] = set()  # checkpoints whose every path passed the check

    def _once(self, key: object, compute: Callable[[], T]) -> T:
        with self._lock:
            future = self._futures.get(key)
            owner = future is None
            if owner:
                future = self._futures[key] = Future()
        if owner:
            try:
                future.set_result(compute())
            except BaseException as err:  # shared with waiters, re-raised below
                future.set_exception(err)
        return future.result()

    def listing(self, prefix: str) -> list[LogEntry]:
        entries = self._once(("list", prefix), lambda: self.store.list_log(prefix))
        for entry in entries:
            self.sizes[entry.name] = entry.size
        return entries

    def entries_for(self, low: int, high: int) -> list[LogEntry]:
        """Listing entries covering versions low..high (and possibly a few around them)."""
        entries: list[LogEntry] = []
        for prefix in window_prefixes(low, high):
            entries += self.listing(prefix)
        return entries

    def commit(self, version: int) -> SourceCommit:
        """The primary's commit at `version`, validated: bytes within max_commit_bytes, JSON
        lines, and every referenced path inside the table.

        Raises:
            CommitNotFound: no such commit (never written, or cleaned up).
            CommitIncomplete: empty or not JSON lines yet (retryable).
            InvalidCommit: too large, or a path escapes the table.
        """
        def read() -> SourceCommit:
            name = commit_name(version)
            try:
                data = self.store.get_log_file(name)
            except FileNotFoundError as err:
                raise CommitNotFound(
                    f"table {self.table.name}: version {version} has no commit on the primary "
                    f"({self.store.description}); it was never written or its log was cleaned up."
                ) from err
            if len(data) > self.table.max_commit_bytes:
                raise InvalidCommit(
                    f"table {self.table.name}: commit {version} is {len(data)} bytes, above "
                    f"max_commit_bytes={self.table.max_commit_bytes}; not replicated. Raise the limit "
                    "in the table's configuration if this commit is expected."
                )
            where = f"table {self.table.name} version {version}"
            actions = parse_commit(data, where=f"{where} on the primary")
            files = referenced_files(actions, self.root, allow_external=self.table.allow_external_files, where=where)
            digest = CommitDigests.digest(data)
            self._file_digest(version, digest)
            return SourceCommit(version, data, files, digest)

        return self._commits.get(("commit", version), read, lambda c: c.footprint)

    def _file_digest(self, version: int, digest: tuple[int, bytes]) -> None:
        if self._digests is None:
            return
        with self._lock:
            if self._epoch is None:
                if len(self._unfiled) < 4:
                    self._unfiled[version] = digest
                return
            epoch = self._epoch
        self._digests.put(epoch, version, digest)

    def at_epoch(self, epoch: int) -> "SourceLog":
        """The topology was read: this is the primary at `epoch`; remember what was read so far."""
        with self._lock:
            self._epoch, unfiled, self._unfiled = epoch, self._unfiled, {}
        if self._digests is not None:
            for version, digest in unfiled.items():
                self._digests.put(epoch, version, digest)
        return self

    @property
    def epoch(self) -> int | None:
        """The topology epoch this view was read at (None until `at_epoch`)."""
        return self._epoch

    def commit_bytes(self, version: int) -> bytes:
        return self.commit(version).data

    def commit_files(self, version: int) -> list[ReferencedFile]:
        return self.commit(version).files

    def holds_commit(self, version: int) -> bool:
        """The commit at `version` was read by this view and is still held (no request to get it)."""
        return self._commits.holds(("commit", version))

    def knows_entry(self, version: int) -> bool:
        """`commit_entry(version)` would answer from a remembered digest, without a request."""
        return self._digests is not None and self._digests.entry(self._epoch, version) is not None

    def commit_entry(self, version: int) -> LogEntry | None:
        """The primary's commit blob properties (one HEAD), or None when it is gone; size and
        MD5 only, without a request, when this process read that commit at this epoch."""
        known = self._digests.entry(self._epoch, version) if self._digests is not None else None
        if known is not None:
            return known
        return self._once(("entry", version), lambda: self.store.log_entry(commit_name(version)))

    def last_checkpoint(self) -> tuple[int, bytes] | None:
        def read():
            current = self.store.get_last_checkpoint()
            if current is None:
                return None
            try:
                version = json.loads(current.data)["version"]
            except (ValueError, KeyError, TypeError):
                return None  # half-written or foreign: the listing is authoritative
            return (int(version), current.data) if isinstance(version, int) else None

        return self._once(("last_checkpoint",), read)

    def _iter_actions(self, name: str):
        """Stream one checkpoint or sidecar file's add/sidecar actions, a batch at a time."""
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            self.store.read_log_file_into(name, spool)
            spool.seek(0)
            yield from iter_checkpoint_actions(spool, is_json=name.endswith(".json"))

    def checkpoint_sidecars(self, name: str) -> list[str]:
        """`_delta_log`-relative names of the sidecars a v2 checkpoint references."""
        where = f"table {self.table.name} checkpoint {name}"

        def compute() -> list[str]:
            return [sidecar_name(a["sidecar"].get("path") if isinstance(a["sidecar"], dict) else None,
                                 self.root, where=where)
                    for chunk in self._iter_actions(name) for a in chunk if "sidecar" in a]

        return self._once(("sidecars", name), compute)

    def check_checkpoint(self, names: list[str]) -> None:
        """Check every path a checkpoint (its parts and sidecars) names, once per invocation, before
        any of its files is copied: a replica never receives a checkpoint that points outside the table.

        Raises:
            InvalidCommit: a sidecar or add path is not a plain file inside the table.
        """
        def compute() -> bool:
            for _ in self.iter_checkpoint_files(names):
                pass
            return True

        with self._lock:
            if tuple(names) in self._checked:
                return
        self._once(("checked", tuple(names)), compute)

    def iter_checkpoint_files(self, names: list[str]):
        """Yield, a batch at a time, the files the adds of a checkpoint (all parts and
        sidecars) reference. Memory is bounded by one batch whatever the table's size.

        Raises:
            InvalidCommit: a path escapes the table.
        """
        where = f"table {self.table.name} checkpoint {names[0]}"
        sources = list(names)
        for name in names:
            if parse_log_name(name).kind == LogFileKind.CHECKPOINT_V2:
                sources += self.checkpoint_sidecars(name)
        for name in sources:
            for chunk in self._iter_actions(name):
                adds = [{"add": a["add"]} for a in chunk if "add" in a]
                if adds:
                    yield referenced_files(adds, self.root, allow_external=self.table.allow_external_files,
                                           where=where)
        with self._lock:  # every path was checked on the way: check_checkpoint need not read it again
            self._checked.add(tuple(names))

    def latest_checkpoint(self, *, at_least: int = 0) -> tuple[int, list[str]] | None:
        """The newest complete checkpoint at or after `at_least`, or None."""
        hint = self.last_checkpoint()
        if hint is not None and hint[0] >= at_least:
            found = complete_checkpoints(self.listing(version_prefix(hint[0])))
            if hint[0] in found:
                return hint[0], found[hint[0]]
        found = complete_checkpoints(self.listing(""))
        candidates = [v for v in found if v >= at_least]
        if not candidates:
            return None
        best = max(candidates)
        return best, found[best]
