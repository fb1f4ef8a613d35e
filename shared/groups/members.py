"""Which tables belong to a group: a relative path passes the group's include and exclude globs.

One decision, used by event routing, the discovery sweep and name resolution alike, so a table
excluded by configuration is never replicated by one path and reported by another.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from shared.config.model import GROUP_SEPARATOR, GroupConfig
from shared.delta.log import LOG_DIR


def is_member(group: GroupConfig, relative: str) -> bool:
    """`relative` (a table root under the group's prefix) is one of the group's tables.

    Folders whose name starts with '_' or '.' (this app's `_quarantine`, Spark's `_temporary`,
    hidden folders) never hold a member: nothing under them is a table a user made.
    """
    if not relative or any(part.startswith(("_", ".")) for part in relative.split("/")):
        return False
    return (any(fnmatchcase(relative, p) for p in group.include)
            and not any(fnmatchcase(relative, p) for p in group.exclude))


def member_of_blob(group: GroupConfig, prefix: str, blob_path: str) -> tuple[str, str] | None:
    """(relative table root, name inside `_delta_log/`) of a blob under `prefix`, or None when the
    blob is not inside a member's `_delta_log/` (data files, other folders)."""
    base = f"{prefix}/" if prefix else ""
    if not blob_path.startswith(base):
        return None
    rest = blob_path[len(base):]
    marker = f"/{LOG_DIR}/"
    at = rest.find(marker)
    if at <= 0:
        return None
    relative, name = rest[:at], rest[at + len(marker):]
    return (relative, name) if is_member(group, relative) else None


def split_name(name: str) -> tuple[str, str] | None:
    """(group, the rest) of a group table's name `<group>:<path with '/' as '.'>`, else None."""
    group, sep, rest = name.partition(GROUP_SEPARATOR)
    return (group, rest) if sep and group and rest else None
