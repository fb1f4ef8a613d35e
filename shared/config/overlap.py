"""Locations compared by account, not by connection name.

Two connection names can point at one account (a key and a SAS, an identity URI and a connection
string), so the parse-time checks by name miss a replica that is another table's source, or one
inside its own source. Here every location is resolved to its account endpoint first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

from shared.config.model import ConnectionSettings, ReplicationConfig

# Roles that are only read: two of them may name one table (a consolidation reading a replicated
# table's source). A role that is written (replica, consolidation target) may share nothing.
_READ_ONLY = ("source", "consolidation source")


@dataclass(frozen=True)
class _Place:
    field: str  # e.g. tables[0].replicas[1]
    role: str
    endpoint: str  # the account's blob endpoint, normalised
    container: str
    path: str
    table: int | None  # the table index for a table's own source and replicas


def account_endpoint(settings: ConnectionSettings) -> str:
    """The account a connection reaches, normalised: host and path of its blob endpoint, lowercase."""
    parsed = urlparse(settings.blob_service_url or "")
    return f"{(parsed.hostname or '').lower()}:{parsed.port or ''}{parsed.path.rstrip('/').lower()}"


def _places(config: ReplicationConfig, settings: Mapping[str, ConnectionSettings]) -> list[_Place]:
    places = []

    def add(field: str, role: str, loc, table: int | None) -> None:
        if loc is not None and loc.connection in settings:
            places.append(_Place(field, role, account_endpoint(settings[loc.connection]), loc.container,
                                 loc.path.strip("/"), table))

    for i, table in enumerate(config.tables):
        add(f"tables[{i}].source", "source", table.source, i)
        for j, replica in enumerate(table.replicas):
            add(f"tables[{i}].replicas[{j}]", "replica", replica, i)
    for g, group in enumerate(config.groups):  # a group's prefix holds every table under it
        add(f"groups[{g}].source", "source", group.source, None)
        for j, replica in enumerate(group.replicas):
            add(f"groups[{g}].replicas[{j}]", "replica", replica, None)
    for k, consolidation in enumerate(config.consolidations):
        for j, source in enumerate(consolidation.sources):
            if source.table is None:  # a configured table's source is checked as that table's
                add(f"consolidations[{k}].sources[{j}]", "consolidation source", source.location, None)
        add(f"consolidations[{k}].target", "consolidation target", consolidation.target, None)
    return places


def _under(path: str, folder: str) -> bool:
    """`path` is `folder` or inside it ("" is the whole container)."""
    return not folder or (path + "/").startswith(folder + "/")


def location_conflicts(config: ReplicationConfig, settings: Mapping[str, ConnectionSettings]) -> list[str]:
    """Every pair of locations that are equal or nested in one account and container, as messages
    naming both field paths; empty when none.

    Rejected: a written location (replica, consolidation target) equal to or nested with any other
    location; two tables' sources equal or nested; read-only locations nested (equal ones may be
    shared: a consolidation may read a configured table's source inline).
    """
    places = _places(config, settings)
    problems = []
    for a_index, a in enumerate(places):
        for b in places[a_index + 1:]:
            if (a.endpoint, a.container) != (b.endpoint, b.container):
                continue
            equal = a.path == b.path
            inside = _under(a.path, b.path) or _under(b.path, a.path)
            if not inside:
                continue
            both_read = a.role in _READ_ONLY and b.role in _READ_ONLY
            if equal and both_read and not (a.role == b.role == "source"):
                continue
            relation = "is the same location as" if equal else "is nested with"
            problems.append(
                f"{a.field}: the {a.role} {a.container}/{a.path} {relation} {b.field} (the {b.role} "
                f"{b.container}/{b.path}) in the same storage account; "
                + ("a replica or consolidation target would write into another table. " if not both_read else
                   "table roots must not nest. ")
                + "Point one of them elsewhere.")
    return problems
