"""The public read API: `open_table` loads a table from the nearest location that qualifies.

Example:
    >>> from shared.app.open_table import open_table
    >>> dt = open_table("sales", region="westeu", max_staleness_seconds=300)
    >>> dt.to_pyarrow_table()
"""

from __future__ import annotations

from datetime import datetime

from deltalake import DeltaTable

from shared.errors import ConfigError
from shared.reads.resolver import Resolution, resolve_location

__all__ = ["open_table", "resolve_table"]


def resolve_table(table: str, *, region: str | None = None, max_staleness_seconds: float | None = None,
                  min_version: int | None = None, version: int | None = None, timestamp: datetime | None = None,
                  runtime=None, status=None) -> Resolution:
    """Where `open_table` would read from, without opening it (see `resolve_location`).

    Raises:
        ConfigError: the table is not configured.
        ValueError: contradictory or out-of-range arguments.
        NoReadableLocation: no location qualifies; the error lists each and why.
        TopologyUnavailable: the function app's table storage does not answer and this process
            never read the topology (a stale one is used, and flagged, when it did).
    """
    if runtime is None:
        from shared.runtime import get_runtime

        runtime = get_runtime()
    try:
        config = runtime.table(table)
    except KeyError:
        raise ConfigError(f"table {table!r} is not configured; configured tables: "
                          f"{runtime.table_names()}") from None
    return resolve_location(runtime, config, region=region, max_staleness_seconds=max_staleness_seconds,
                            min_version=min_version, version=version, timestamp=timestamp, status=status)


def open_table(table: str, *, region: str | None = None, max_staleness_seconds: float | None = None,
               min_version: int | None = None, version: int | None = None, timestamp: datetime | None = None,
               runtime=None, status=None, group: str | None = None, consistent: bool = False) -> DeltaTable:
    """A `deltalake.DeltaTable` from the first location on the reader's preference list that qualifies.

    Settings and credentials resolve as in the function app (REPLICATION_CONFIG and the
    connection settings), unless `runtime` is given. The table is loaded at the version
    the resolver checked: `version`, the version `timestamp` resolves to by the commits' own
    times, or the chosen location's head.

    Args:
        table: the configured table name.
        region: the reader's Azure region.
        max_staleness_seconds: the most the data may lag the primary.
        min_version: read-your-writes: a writer that committed N passes N.
        version: time travel by version.
        timestamp: time travel by time (naive means UTC).
        runtime: a ReplicationRuntime to use instead of the host's.
        status: a StatusStore to read caught-up times from instead of the runtime's.

        group, consistent: with `consistent=True`, the table as of its group's recovery point at the
            location chosen for the whole group (shared/reads/group.py): tables opened this way with
            one resolution read one moment; pass the same `runtime` and read them together.

    Raises:
        ConfigError, ValueError, NoReadableLocation, TopologyUnavailable: see `resolve_table`.
    """
    if group is not None or consistent:
        return _open_consistent(table, group, consistent, region=region, runtime=runtime,
                                other=(max_staleness_seconds, min_version, version, timestamp))
    chosen = resolve_table(table, region=region, max_staleness_seconds=max_staleness_seconds,
                           min_version=min_version, version=version, timestamp=timestamp, runtime=runtime,
                           status=status)
    return DeltaTable(chosen.deltalake_uri, version=chosen.version, storage_options=chosen.storage_options)


def _open_consistent(table: str, group: str | None, consistent: bool, *, region, runtime, other) -> DeltaTable:
    from shared.errors import NoReadableLocation
    from shared.reads.group import resolve_group
    from shared.storage.locations import deltalake_options

    if group is None or not consistent or any(v is not None for v in other):
        raise ValueError("a consistent group read takes group=<name> and consistent=True (and optionally region), "
                         "without max_staleness_seconds, min_version, version or timestamp")
    if runtime is None:
        from shared.runtime import get_runtime

        runtime = get_runtime()
    try:
        resolved = resolve_group(runtime, group, region=region)
    except KeyError:
        raise ConfigError(f"group {group!r} is not configured") from None
    read = next((t for t in resolved.tables if t.table == table), None)
    if read is None:
        raise ConfigError(f"table {table!r} is not in group {group!r}")
    if read.version is None:
        raise NoReadableLocation(f"table {table} of group {group}: {read.reason}", list(resolved.tried))
    loc = runtime.table(table).location(read.location)
    return DeltaTable(read.deltalake_uri, version=read.version,
                      storage_options=deltalake_options(runtime.settings[loc.connection]))
