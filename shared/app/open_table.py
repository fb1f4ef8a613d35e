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
        config = runtime.config.table(table)
    except KeyError:
        raise ConfigError(f"table {table!r} is not configured; configured tables: "
                          f"{', '.join(t.name for t in runtime.config.tables)}") from None
    return resolve_location(runtime, config, region=region, max_staleness_seconds=max_staleness_seconds,
                            min_version=min_version, version=version, timestamp=timestamp, status=status)


def open_table(table: str, *, region: str | None = None, max_staleness_seconds: float | None = None,
               min_version: int | None = None, version: int | None = None, timestamp: datetime | None = None,
               runtime=None, status=None) -> DeltaTable:
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

    Raises:
        ConfigError, ValueError, NoReadableLocation, TopologyUnavailable: see `resolve_table`.
    """
    chosen = resolve_table(table, region=region, max_staleness_seconds=max_staleness_seconds,
                           min_version=min_version, version=version, timestamp=timestamp, runtime=runtime,
                           status=status)
    return DeltaTable(chosen.deltalake_uri, version=chosen.version, storage_options=chosen.storage_options)
