"""A location's position: its newest version, found from its own `_delta_log` (never cached).

Versions are written in order, so a location's versions form contiguous runs, and a few
small listings around a hint find the head.
"""

from __future__ import annotations

import json

from shared.delta.log import LogFileKind, parse_log_name, version_prefix
from shared.delta.source_log import SourceLog, complete_checkpoints
from shared.storage.table_store import LogEntry, TableStore


def log_versions(entries: list[LogEntry]) -> set[int]:
    """Versions a listing shows as present: commits and complete checkpoints."""
    versions = {lf.version for e in entries if (lf := parse_log_name(e.name)) and lf.kind == LogFileKind.COMMIT}
    return versions | set(complete_checkpoints(entries))


def find_head(store: TableStore, near: int) -> tuple[int | None, list[LogEntry]]:
    """The replica's head: its highest version, searching windows around `near` downwards.

    Replicas are written in version order, so their versions form one contiguous run and
    the highest version in the smallest window holding any version is the head (or at
    least `near`). Costs one small listing when the replica is close to `near`.

    Returns:
        The head (None for an empty replica) and the listing it was found in.
    """
    entries = store.list_log(version_prefix(near)[:19])
    versions = log_versions(entries)
    if versions:
        return max(versions), entries  # the common case: one listing of 10 versions
    if not store.log_exists():
        return None, []  # an empty replica: one more request, not a search
    size = 10
    while size <= 10**19:
        window = near // size
        for w in (window - 1,) if size == 10 else (window, window - 1):
            if w < 0:
                continue
            entries = store.list_log(version_prefix(w * size)[:21 - len(str(size))])
            versions = log_versions(entries)
            if versions:
                return max(versions), entries
        size *= 10
    return None, []


def find_source_head(source: SourceLog) -> int | None:
    """The primary's newest version, listing forward from its `_last_checkpoint`."""
    hint = source.last_checkpoint()
    return _forward_head(source.listing, hint[0] if hint else 0)


def find_latest_version(store: TableStore) -> int | None:
    """A store's newest version with no version to search near (maintenance paths)."""
    start = 0
    current = store.get_last_checkpoint()
    if current is not None:
        try:
            start = int(json.loads(current.data)["version"])
        except (ValueError, KeyError, TypeError):
            start = 0
    return _forward_head(store.list_log, start)


def _forward_head(listing, start: int) -> int | None:
    """Highest version, listing 1000-version windows forward from `start`."""
    head = None
    while True:
        window = version_prefix(start)[:17]
        versions = log_versions(listing(window))
        if not versions:
            break
        head = max(versions)
        window_end = int(window + "999")
        if head < window_end:
            break
        start = window_end + 1
    if head is None and start > 0:
        versions = log_versions(listing(""))
        head = max(versions) if versions else None
    return head
