"""The order in which a reader in a region tries a table's locations."""

from __future__ import annotations

from shared.config.model import LocationConfig, TableConfig


def preference_list(table: TableConfig, region: str | None, *, primary: LocationConfig) -> list[LocationConfig]:
    """The locations a reader in `region` tries, best first.

    With `routing` configured: the list for the reader's region, else its `default` list;
    only the listed locations are tried (the operator may keep readers of a region off a
    location on purpose). Without routing, or when neither list applies: the locations in
    the reader's region (configuration order), then the primary, then the replicas in
    configuration order.

    Args:
        table: the table's configuration.
        region: the reader's Azure region (None: unknown).
        primary: the current primary (see `shared.reads.resolver.primary_location`).

    Returns:
        Distinct locations, best first; never empty.
    """
    names = table.routing.for_region(region) if table.routing is not None else None
    if names is not None:
        return [table.location(n) for n in names]
    ordered: list[LocationConfig] = []
    nearby = [loc for loc in table.locations if region is not None and loc.region == region]
    for loc in (*nearby, primary, *table.locations):
        if loc not in ordered:
            ordered.append(loc)
    return ordered
