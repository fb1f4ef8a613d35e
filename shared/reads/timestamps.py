"""Timestamp -> version by the commits' own times, the same answer on every location.

Readers that resolve `TIMESTAMP AS OF` by the commit blobs' Last-Modified times get a
different version on a replica, whose blobs were written at replication time
(delta-io/delta#1666, #1293). The commit's own time travels with its bytes: the
in-commit timestamp when the table has them, else `commitInfo.timestamp`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

# How much of a commit is read to find its time: commitInfo is the first action for Spark,
# delta-rs and (mandatory with in-commit timestamps) every writer that follows the protocol.
COMMIT_TIME_READ_BYTES = 64 * 1024


class TimestampUnavailable(Exception):
    """Raised when a location cannot answer a timestamp (before its history, or no commit time)."""


def commit_time_ms(chunk: bytes, *, complete: bool) -> int | None:
    """The commit time (ms since the epoch) in the first lines of a commit, or None.

    Args:
        chunk: the commit's bytes, or its first (or last) COMMIT_TIME_READ_BYTES.
        complete: whether `chunk` ends on a line boundary of the commit (a partial last line
            is skipped).
    """
    lines = chunk.split(b"\n")
    if not complete:
        lines = lines[:-1]
    for line in lines:
        if b'"commitInfo"' not in line:
            continue
        try:
            info = json.loads(line).get("commitInfo")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            continue
        if isinstance(info, dict):
            ms = info.get("inCommitTimestamp", info.get("timestamp"))
            if isinstance(ms, (int, float)) and not isinstance(ms, bool):
                return int(ms)
    return None


def to_ms(timestamp: datetime) -> int:
    """Milliseconds since the epoch; a naive datetime is taken as UTC."""
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=timezone.utc)
    return int(timestamp.timestamp() * 1000)


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 timestamp ('2026-11-20T10:00:00Z', '2026-11-20 10:00'); naive means UTC.

    Raises:
        ValueError: not ISO 8601; the message shows the expected form.
    """
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"timestamp {text!r} is not ISO 8601; use e.g. 2026-11-20T10:00:00Z") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def version_at_timestamp(time_of, timestamp_ms: int, *, earliest: int, head: int) -> int:
    """The newest version committed at or before `timestamp_ms` among `earliest`..`head`.

    Binary search over the commits' own times (monotonic for tables with in-commit
    timestamps and for single-writer tables), reading about log2(head - earliest) + 2 commits.

    Args:
        time_of: version -> commit time in ms (raises TimestampUnavailable when it has none).
        timestamp_ms: the requested time.
        earliest: the location's oldest readable version.
        head: the location's newest version.

    Raises:
        TimestampUnavailable: the timestamp is before the location's oldest version.
    """
    first = time_of(earliest)
    if timestamp_ms < first:
        raise TimestampUnavailable(
            f"timestamp {_iso(timestamp_ms)} is before version {earliest} ({_iso(first)}), "
            "the oldest version this location holds")
    if time_of(head) <= timestamp_ms:
        return head
    lo, hi = earliest, head  # time(lo) <= ts < time(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if time_of(mid) <= timestamp_ms:
            lo = mid
        else:
            hi = mid
    return lo


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
