"""Which history a replica still lacks below the versions it is readable at.

A new replica of a table with a checkpoint is made readable at the primary's newest checkpoint C
first (the checkpoint, its files, the commits after it), then the versions below C are backfilled
in ascending order from the primary's lowest version. So a replica's versions are at most two
runs: [bottom..k] (backfilled so far) and [C..head]. A reader asking for a version in the gap
(k, C) finds neither a commit for it nor a checkpoint at or before it with every commit after it,
and gets an error; it never sees rows from another version.

Nothing is remembered between invocations: the runs are found by listing the replica's log from
the bottom, 1000 versions per listing, stopping at the first gap.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.delta.log import LogFileKind, parse_log_name, version_prefix
from shared.delta.source_log import SourceLog, complete_checkpoints
from shared.storage.table_store import LogEntry, TableStore

WINDOW = 1000  # versions per listing (a 17-character name prefix)


@dataclass(frozen=True)
class MissingHistory:
    """Versions low..high the primary has and the replica lacks, below the replica's run at `above`."""

    low: int
    high: int
    above: int

    @property
    def detail(self) -> str:
        return f"history backfilling: versions {self.low}..{self.high}"


def _versions(entries: list[LogEntry]) -> tuple[set[int], dict[int, list[str]]]:
    commits = {lf.version for e in entries if (lf := parse_log_name(e.name)) and lf.kind == LogFileKind.COMMIT}
    return commits, complete_checkpoints(entries)


def primary_bottom(source: SourceLog) -> tuple[int, list[str] | None] | None:
    """The primary's lowest version a reader can reconstruct: version 0 when its commit exists
    (no checkpoint needed), else its oldest complete checkpoint (and the checkpoint's names)."""
    commits, _ = _versions(source.listing(version_prefix(0)[:17]))
    if 0 in commits:
        return 0, None
    checkpoints = complete_checkpoints(source.listing(""))
    if not checkpoints:
        return None
    oldest = min(checkpoints)
    return oldest, checkpoints[oldest]


def replica_runs(store: TableStore, start: int, head: int) -> tuple[int, int, int | None] | None:
    """The replica's first run of versions at or above `start`: (first, last, next present
    version above the gap, or None when the run reaches `head`). None when it has none."""
    first = last = None
    window = start // WINDOW
    while window * WINDOW <= head:
        commits, checkpoints = _versions(store.list_log(version_prefix(window * WINDOW)[:17]))
        for v in sorted(v for v in commits | set(checkpoints) if v >= start):
            if first is None:
                first = last = v
            elif v == last + 1:
                last = v
            elif v > last + 1:
                return first, last, v
        window += 1
    return None if first is None else (first, last, None)


def missing_history(store: TableStore, source: SourceLog, head: int) -> MissingHistory | None:
    """What the replica (at `head`) lacks of the primary's history, or None when nothing."""
    bottom = primary_bottom(source)
    if bottom is None:
        return None
    runs = replica_runs(store, bottom[0], head)
    if runs is None:
        return None
    first, last, following = runs
    if following is not None:
        return MissingHistory(last + 1, following - 1, following)
    if first > bottom[0]:
        return MissingHistory(bottom[0], first - 1, first)
    return None
