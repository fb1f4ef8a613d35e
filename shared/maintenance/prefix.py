"""Is a location's log a byte-identical prefix of the primary's? Maintenance acts only then.

Retention, purges and snapshots decide what to delete (or what to copy) from a location by
comparing it with the primary. That comparison is only meaningful while the location holds
the primary's lineage: a deposed primary with outage commits, a replica that received a
deposed lineage's commit, or a fenced location holds files no other location has, and the
primary "no longer having" them says nothing. Such a location keeps every file until rejoin
has quarantined what only it holds.
"""

from __future__ import annotations

from shared.delta.log import LogFileKind, parse_log_name


def _commits(entries) -> dict[int, object]:
    return {lf.version: e for e in entries if (lf := parse_log_name(e.name)) and lf.kind == LogFileKind.COMMIT}


def not_a_prefix(location, primary, entries, primary_entries) -> str | None:
    """Why `location`'s log is not a prefix of the primary's (None when it is), from two listings
    made in the same run (the location's first).

    Every commit the location holds from the primary's oldest listed version on must be the
    primary's, byte for byte (size, Content-MD5 from the listings; the location's head commit by
    its bytes when an MD5 is missing), and its head must not be beyond the primary's. Versions
    below the primary's oldest log version (the primary cleaned up its log) cannot be compared
    and were checked when they were replicated.

    Args:
        location, primary: the two stores (bytes are read from them only when an MD5 is missing).
        entries, primary_entries: their `_delta_log` listings.
    """
    mine = _commits(entries)
    theirs = _commits(primary_entries)
    if not mine or not theirs:
        return None
    head, primary_head, oldest = max(mine), max(theirs), min(theirs)
    for v in sorted(mine):
        if v < oldest:
            continue
        theirs_v = theirs.get(v)
        if theirs_v is None:
            if v > primary_head:
                return (f"its log is ahead of the primary's (version {head}, the primary at {primary_head}): it "
                        "holds commits of another lineage")
            return f"it holds version {v}, which the primary does not"
        mine_v = mine[v]
        if mine_v.size != theirs_v.size:
            return f"its version {v} differs from the primary's (size)"
        if mine_v.content_md5 and theirs_v.content_md5:
            if mine_v.content_md5 != theirs_v.content_md5:
                return f"its version {v} differs from the primary's (MD5)"
        elif v == head and location.get_log_file(mine_v.name) != primary.get_log_file(theirs_v.name):
            return f"its version {v} differs from the primary's (bytes)"
    return None
