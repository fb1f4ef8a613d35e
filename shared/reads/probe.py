"""A read-only look at one table location with few, small requests: HEADs and ranged GETs.

One `LocationProbe` lives for one resolution; what it learns (commit properties and times)
is remembered only for that call.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass

from shared.config.model import LocationConfig
from shared.delta.log import LogFileKind, commit_name, parse_commit, parse_log_name, version_prefix
from shared.delta.source_log import complete_checkpoints
from shared.errors import AccessDenied, ReplicationError, ReplicaUnreachable
from shared.failover.fence import is_fence
from shared.reads.timestamps import (
    COMMIT_TIME_READ_BYTES,
    TimestampUnavailable,
    commit_time_ms,
)
from shared.storage.clients import build_probe_client
from shared.storage.factory import Stores
from shared.storage.table_store import TableStore

# The first page of a `_delta_log/` listing holds the oldest entries (names sort by version).
_EARLIEST_PAGE = 20
_WINDOW = 1000  # versions per listing when walking a version's chain (a 17-character name prefix)

_stores: "weakref.WeakKeyDictionary[object, Stores]" = weakref.WeakKeyDictionary()


def probe_stores(runtime) -> Stores:
    """Stores over short-timeout clients, built once per runtime (connection pools, no data)."""
    stores = _stores.get(runtime)
    if stores is None:
        stores = Stores({name: build_probe_client(s, counter=runtime.counter) for name, s in runtime.settings.items()})
        _stores[runtime] = stores
    return stores


@dataclass(frozen=True)
class CommitProps:
    size: int
    content_md5: bytes | None


class LocationProbe:
    """Bounded reads of one location's `_delta_log` for one resolution.

    Args:
        store: the location's table over a short-timeout client (`probe_stores(runtime).table(location)`).
        location: the location.

    Raises (every method):
        ReplicaUnreachable: the account did not answer or refused us (the refusal's AccessDenied,
            with its hint, is the cause: classified once, in shared.storage.errors).
    """

    def __init__(self, store: TableStore, location: LocationConfig) -> None:
        self.location = location
        self._store = store
        self.requests = 0
        self._props: dict[int, CommitProps | None] = {}
        self._times: dict[int, int] = {}

    def _call(self, what: str, fn):
        self.requests += 1
        try:
            return fn()
        except FileNotFoundError:
            return None
        except AccessDenied as err:
            # For a reader a location it may not read is one it cannot use now: skipped, like
            # one that does not answer (the resolver tries the next).
            raise ReplicaUnreachable(f"{self.location.name}: {err}") from err

    # -- single requests --------------------------------------------------------------
    def commit(self, version: int) -> CommitProps | None:
        """Size and Content-MD5 of commit `version` (one HEAD), or None when absent."""
        if version not in self._props:
            entry = self._call(f"reading commit {version}", lambda: self._store.log_entry(commit_name(version)))
            self._props[version] = None if entry is None else CommitProps(entry.size, entry.content_md5)
        return self._props[version]

    def commit_bytes(self, version: int) -> bytes | None:
        return self._call(f"reading commit {version}", lambda: self._store.get_log_file(commit_name(version)))

    def fenced_at(self, version: int) -> bool:
        """Whether commit `version` is a fence (failover/fence.py): one GET. Unreadable: not a fence."""
        data = self.commit_bytes(version)
        try:
            return data is not None and is_fence(parse_commit(data, where=f"{self.location.name} version {version}"))
        except ReplicationError:
            return False

    def last_checkpoint_version(self) -> int | None:
        """The version `_last_checkpoint` names (one small GET), or None."""
        found = self._call("reading _last_checkpoint", self._store.get_last_checkpoint)
        data = found.data if found is not None else None
        try:
            return int(json.loads(data)["version"]) if data else None
        except (ValueError, KeyError, TypeError):
            return None

    def earliest_version(self) -> int | None:
        """The oldest version a reader can load here (one listing page), or None when empty.

        Version 0's commit, or the oldest checkpoint when the early log is gone (a replica
        seeded from a checkpoint, or a primary after log cleanup).
        """
        entries = self._call("listing the oldest log entries", lambda: self._store.list_log(limit=_EARLIEST_PAGE))
        names = [e.name for e in entries or []]
        commits, checkpoints = [], []
        for name in names:
            parsed = parse_log_name(name)
            if parsed is None or parsed.version is None:
                continue
            if parsed.kind == LogFileKind.COMMIT:
                commits.append(parsed.version)
            elif parsed.kind in (LogFileKind.CHECKPOINT, LogFileKind.CHECKPOINT_PART, LogFileKind.CHECKPOINT_V2):
                checkpoints.append(parsed.version)
        if 0 in commits:
            return 0
        if checkpoints:
            return min(checkpoints)
        return min(commits) if commits else None

    def missing_under(self, version: int) -> int | None:
        """Whether a reader can load `version` here: None when it can, else the missing version
        that stops it (a hole: an interrupted backfill, history older than the location holds).

        A reader of `version` starts from the newest complete checkpoint at or below it (or from
        version 0 without one) and needs every commit after that up to `version`. Walking down
        from `version`, the first checkpoint met makes it readable, and a missing commit met
        before any checkpoint is the hole. One listing per 1,000 versions walked: usually one,
        since checkpoints are at most a few hundred versions apart.
        """
        v = version
        for window in range(version // _WINDOW, -1, -1):
            commits, checkpoints = self._window_versions(window)
            while v >= window * _WINDOW:
                if v in checkpoints:
                    return None
                if v not in commits:
                    return v
                if v == 0:
                    return None
                v -= 1
        return v

    def _window_versions(self, window: int) -> tuple[set[int], set[int]]:
        """Commits and complete checkpoints among versions window*1000 .. window*1000+999 (one listing)."""
        prefix = version_prefix(window * _WINDOW)[:17]
        entries = self._call(f"listing versions {window * _WINDOW}..{window * _WINDOW + _WINDOW - 1}",
                             lambda: self._store.list_log(prefix)) or []
        commits = {lf.version for e in entries if (lf := parse_log_name(e.name)) and lf.kind == LogFileKind.COMMIT}
        return commits, set(complete_checkpoints(entries))

    def commit_time(self, version: int) -> int:
        """Commit `version`'s own time in ms (one ranged GET, two for a huge commit).

        Raises:
            TimestampUnavailable: the commit is absent or carries no commit time.
        """
        if version in self._times:
            return self._times[version]
        def read(offset: int):
            return self._store.get_log_range(commit_name(version), offset, COMMIT_TIME_READ_BYTES)

        first = self._call(f"reading commit {version}", lambda: read(0))
        if first is None:
            raise TimestampUnavailable(f"version {version} has no commit at {self.location.name}")
        data, size = first
        ms = commit_time_ms(data, complete=size <= COMMIT_TIME_READ_BYTES)
        if ms is None and size > COMMIT_TIME_READ_BYTES:
            tail, _ = self._call(f"reading commit {version}", lambda: read(size - COMMIT_TIME_READ_BYTES)) or (b"", 0)
            ms = commit_time_ms(tail.split(b"\n", 1)[-1], complete=True)
        if ms is None:
            raise TimestampUnavailable(f"commit {version} at {self.location.name} has no commitInfo timestamp")
        self._times[version] = ms
        return ms

    # -- searches -----------------------------------------------------------------------
    def head(self, hint: int | None) -> int | None:
        """The newest version, by HEAD requests around `hint` (None: an empty location).

        Delta versions are contiguous, so an exponential search from a version that exists
        and a binary search below one that does not find the head in about 2*log2(distance)
        HEADs: two when the hint is the head. Without a hint, `_last_checkpoint` supplies one.
        """
        if hint is None:
            hint = self.last_checkpoint_version()
        if hint is None:
            hint = self.earliest_version()
            if hint is None:
                return None
        if self.commit(hint) is not None:
            return self._gallop_up(hint)
        missing, step = hint, 1
        while missing > 0:
            candidate = max(hint - step, 0)
            if self.commit(candidate) is not None:
                return self._bisect(candidate, missing)
            missing, step = candidate, step * 2
        earliest = self.earliest_version()  # nothing at or below the hint: a seeded location, or none
        if earliest is None or self.commit(earliest) is None:
            return None
        return self._gallop_up(earliest)

    def _gallop_up(self, low: int) -> int:
        step = 1
        while self.commit(low + step) is not None:
            low, step = low + step, step * 2
        return self._bisect(low, low + step)

    def _bisect(self, present: int, absent: int) -> int:
        while absent - present > 1:
            mid = (present + absent) // 2
            if self.commit(mid) is not None:
                present = mid
            else:
                absent = mid
        return present
