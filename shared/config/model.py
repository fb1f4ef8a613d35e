"""The configuration's model: frozen dataclasses, safe to log (connection *names*, never values)."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MAX_COMMIT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class LocationConfig:
    """Where a table lives: a connection name, a container and a path inside it."""

    name: str
    connection: str
    container: str
    path: str
    retention: "RetentionConfig | None" = None
    region: str | None = None  # the Azure region, e.g. "westeu"; routing and cost use it

    def describe(self) -> str:
        return f"{self.connection}:{self.container}/{self.path}"


@dataclass(frozen=True)
class RetentionConfig:
    """How long a replica keeps history. Neither limit set: follow the primary."""

    retention_hours: int | None = None
    retain_versions: int | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class SnapshotConfig:
    replica: str
    container: str
    path: str
    keep_last: int


@dataclass(frozen=True)
class RoutingConfig:
    """Which locations a reader in a region tries, in order (location names of one table)."""

    by_region: tuple[tuple[str, tuple[str, ...]], ...] = ()
    default: tuple[str, ...] | None = None

    def for_region(self, region: str | None) -> tuple[str, ...] | None:
        """The ordered location names for `region`, else the default list (None when neither)."""
        for name, locations in self.by_region:
            if name == region:
                return locations
        return self.default


@dataclass(frozen=True)
class TableConfig:
    name: str
    source: LocationConfig
    replicas: tuple[LocationConfig, ...]
    lag_threshold_seconds: int = 600
    snapshots: SnapshotConfig | None = None
    allow_external_files: bool = False
    max_commit_bytes: int = DEFAULT_MAX_COMMIT_BYTES
    routing: RoutingConfig | None = None  # reader region -> location names; None: nearest, primary, replicas
    # "full": a new replica is readable at the newest checkpoint first, then older versions are
    # backfilled; "from_checkpoint": history before the seeding checkpoint is never copied.
    history: str = "full"
    auto_rejoin: bool = False  # the lag check rejoins a diverged former primary (quarantining its extra commits)
    group: str | None = None  # the group it was discovered in (None: a table of its own entry)

    def replica(self, name: str) -> LocationConfig:
        for replica in self.replicas:
            if replica.name == name:
                return replica
        raise KeyError(name)

    @property
    def locations(self) -> tuple[LocationConfig, ...]:
        """The source, then the replicas in configuration order."""
        return (self.source, *self.replicas)

    def location(self, name: str) -> LocationConfig:
        """The source or replica called `name`. Raises KeyError when none is."""
        for loc in self.locations:
            if loc.name == name:
                return loc
        raise KeyError(name)


GROUP_SEPARATOR = ":"  # <group>:<path relative to the group's prefix, '/' written '.'>


def join_path(prefix: str, relative: str) -> str:
    return f"{prefix}/{relative}" if prefix else relative


@dataclass(frozen=True)
class GroupConfig:
    """Every Delta table under one prefix, replicated to the same relative path under each replica's prefix.

    `source` and `replicas` are LocationConfigs whose `path` is the prefix ("" for a whole
    container); a member's locations are those with the member's relative path appended.
    """

    name: str
    source: LocationConfig
    replicas: tuple[LocationConfig, ...]
    include: tuple[str, ...] = ("*",)  # globs over the path relative to the prefix ('*' spans '/')
    exclude: tuple[str, ...] = ()
    lag_threshold_seconds: int = 600
    rpo_threshold_seconds: int | None = None
    routing: RoutingConfig | None = None
    snapshots: SnapshotConfig | None = None  # `path` is the prefix under which each member's snapshots go
    allow_external_files: bool = False
    max_commit_bytes: int = DEFAULT_MAX_COMMIT_BYTES
    history: str = "full"
    auto_rejoin: bool = False

    @property
    def locations(self) -> tuple[LocationConfig, ...]:
        return (self.source, *self.replicas)

    def table_name(self, relative: str) -> str:
        """`sales/orders` under group `lake` is `lake:sales.orders` (the contract's name)."""
        return f"{self.name}{GROUP_SEPARATOR}{relative.replace('/', '.')}"

    def member(self, relative: str) -> TableConfig:
        """The TableConfig of the table at `relative` (its locations: each prefix + that path)."""
        def at(loc: LocationConfig) -> LocationConfig:
            return LocationConfig(loc.name, loc.connection, loc.container, join_path(loc.path, relative),
                                  retention=loc.retention, region=loc.region)

        snapshots = None
        if self.snapshots is not None:
            snapshots = SnapshotConfig(self.snapshots.replica, self.snapshots.container,
                                       join_path(self.snapshots.path, relative), self.snapshots.keep_last)
        return TableConfig(name=self.table_name(relative), source=at(self.source),
                           replicas=tuple(at(r) for r in self.replicas),
                           lag_threshold_seconds=self.lag_threshold_seconds, snapshots=snapshots,
                           allow_external_files=self.allow_external_files, max_commit_bytes=self.max_commit_bytes,
                           routing=self.routing, history=self.history, auto_rejoin=self.auto_rejoin, group=self.name)


DEFAULT_REGION_COLUMN = "source_region"
DEFAULT_MAX_COMMITS_PER_RUN = 100
DEFAULT_MAX_MERGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ConsolidationSource:
    """One regional table feeding a consolidation: a configured table's source, or an inline location.

    `name` identifies the source inside its consolidation (the table's name, or the
    location's name, default its region); the target's txn app id is `<consolidation>/<name>`.
    """

    name: str
    location: LocationConfig
    table: str | None = None  # set when the source is a configured table

    @property
    def region(self) -> str:
        return self.location.region or ""


@dataclass(frozen=True)
class ConsolidationConfig:
    """Regional tables merged into one global table, exactly once per source row."""

    name: str
    sources: tuple[ConsolidationSource, ...]
    target: LocationConfig
    keys: tuple[str, ...]
    on_match: str = "ignore"  # "ignore" (insert-only) or "update"
    region_column: str = DEFAULT_REGION_COLUMN
    partition_by: tuple[str, ...] = ()
    max_commits_per_run: int = DEFAULT_MAX_COMMITS_PER_RUN
    max_merge_bytes: int = DEFAULT_MAX_MERGE_BYTES

    def app_id(self, source: ConsolidationSource) -> str:
        """The Delta txn application id recording this source's progress in the target."""
        return f"{self.name}/{source.name}"

    def source(self, name: str) -> ConsolidationSource:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)


@dataclass(frozen=True)
class ReplicationConfig:
    tables: tuple[TableConfig, ...]
    consolidations: tuple[ConsolidationConfig, ...] = ()
    groups: tuple["GroupConfig", ...] = ()

    def group(self, name: str) -> "GroupConfig":
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)

    def consolidation(self, name: str) -> ConsolidationConfig:
        for consolidation in self.consolidations:
            if consolidation.name == name:
                return consolidation
        raise KeyError(name)

    def table(self, name: str) -> TableConfig:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(name)

    def connection_names(self) -> list[str]:
        names: list[str] = []
        for places in (*self.tables, *self.groups):
            for loc in places.locations:
                if loc.connection not in names:
                    names.append(loc.connection)
        return names


@dataclass(frozen=True)
class ConnectionSettings:
    """How to reach one storage account. `connection_string` is secret: never log it."""

    name: str
    account_name: str
    blob_service_url: str
    connection_string: str | None = field(default=None, repr=False)
    credential_kind: str | None = None  # "managedidentity" or None (DefaultAzureCredential)
    client_id: str | None = None


@dataclass(frozen=True)
class TableServiceSettings:
    """How to reach the Azure Table service for status rows. The connection string is secret."""

    name: str
    connection_string: str | None = field(default=None, repr=False)
    endpoint: str | None = None


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go; `key` is secret (None means identity-based)."""

    endpoint: str
    key: str | None = field(default=None, repr=False)
