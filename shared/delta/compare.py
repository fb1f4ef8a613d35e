"""Whether a location's commit is the primary's: the one comparison, and the one "diverged" error.

Byte-identical history is the promise, so two commits are the same only when their bytes are.
Listings give size and (on Blob Storage) Content-MD5 for free: different sizes settle it, equal
MD5s settle it, and only without an MD5 on both sides (ADLS writes carry none) are the bytes read.
"""

from __future__ import annotations

from typing import Callable

from shared.errors import ReplicaDiverged


def same_commit(mine, theirs, mine_bytes: Callable[[], bytes], theirs_bytes: Callable[[], bytes]) -> bool:
    """Byte-identical commits. `mine`/`theirs` carry `size` and `content_md5` (a listing entry or
    a HEAD's properties); the `*_bytes` callables are read only when the MD5s cannot decide."""
    if mine.size != theirs.size:
        return False
    if mine.content_md5 and theirs.content_md5:
        return mine.content_md5 == theirs.content_md5
    return mine_bytes() == theirs_bytes()


def diverged(replica: str, table: str, version: int) -> ReplicaDiverged:
    """The error for a replica whose commit at `version` is not the primary's (never overwritten)."""
    return ReplicaDiverged(
        f"replica {replica} of table {table} has version {version} with different content from the primary's; "
        "the replica has diverged. Inspect both commits and restore the replica from a snapshot. It will not be "
        "overwritten."
    )
