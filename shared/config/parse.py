"""Validation of a decoded configuration document: every problem at once, each with its field path."""

from __future__ import annotations

import re
from typing import Any

from shared.config.model import (
    DEFAULT_MAX_COMMIT_BYTES,
    LocationConfig,
    ReplicationConfig,
    RetentionConfig,
    RoutingConfig,
    SnapshotConfig,
    TableConfig,
)
from shared.errors import ConfigError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_SETTING_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Errors:
    """Collects every problem so one ConfigError reports them all."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(
                "invalid replication configuration; fix these and restart: " + "; ".join(self.items)
            )


def parse_config(raw: Any) -> ReplicationConfig:
    """Validate a decoded configuration document; see `load_config`."""
    # The consolidations section builds on this module's field checks (imported here: no cycle).
    from shared.config.parse_consolidation import parse_consolidation
    from shared.config.parse_group import parse_group

    errors = _Errors()
    if not isinstance(raw, dict):
        errors.add("(root)", 'expected a JSON object like {"tables": [...]}')
        errors.raise_if_any()
    _unknown_keys(raw, {"tables", "consolidations", "groups"}, "(root)", errors)
    tables_raw = raw.get("tables", [] if raw.get("consolidations") or raw.get("groups") else None)
    consolidations_raw = raw.get("consolidations", [])
    groups_raw = raw.get("groups", [])
    # A configuration may hold only groups or only consolidations; with neither it needs a table.
    if not isinstance(tables_raw, list) or (not tables_raw and not consolidations_raw and not groups_raw):
        errors.add("tables", "expected a non-empty list of tables (or a groups or consolidations section)")
        errors.raise_if_any()
    tables = []
    for i, t in enumerate(tables_raw):
        table = _parse_table(t, f"tables[{i}]", errors)
        if table is not None:
            tables.append(table)
    _check_uniqueness(tables, errors)
    consolidations = []
    if not isinstance(consolidations_raw, list):
        errors.add("consolidations", "expected a list of consolidations")
    else:
        table_names = [t.get("name") for t in tables_raw if isinstance(t, dict)]
        for i, c in enumerate(consolidations_raw):
            consolidation = parse_consolidation(c, f"consolidations[{i}]", errors, tables, table_names)
            if consolidation is not None:
                if any(other.name == consolidation.name for other in consolidations):
                    errors.add(f"consolidations[{i}].name", f"duplicate consolidation name {consolidation.name!r}")
                consolidations.append(consolidation)
    groups = []
    if not isinstance(groups_raw, list):
        errors.add("groups", "expected a list of groups")
    else:
        for i, g in enumerate(groups_raw):
            group = parse_group(g, f"groups[{i}]", errors)
            if group is not None:
                if any(other.name == group.name for other in groups):
                    errors.add(f"groups[{i}].name", f"duplicate group name {group.name!r}")
                groups.append(group)
    errors.raise_if_any()
    return ReplicationConfig(tables=tuple(tables), consolidations=tuple(consolidations), groups=tuple(groups))


_TABLE_KEYS = {
    "name", "source", "replicas", "lag_threshold_seconds", "snapshots",
    "allow_external_files", "max_commit_bytes", "routing", "history", "auto_rejoin",
}
HISTORY_CHOICES = ("full", "from_checkpoint")
_LOCATION_KEYS = {"name", "connection", "container", "path", "retention", "region"}
_REGION_RE = re.compile(r"^[a-z][a-z0-9]{1,39}$")
DEFAULT_SOURCE_NAME = "primary"
_RETENTION_KEYS = {"retention_hours", "retain_versions", "dry_run"}
_SNAPSHOT_KEYS = {"replica", "container", "path", "keep_last"}


def _unknown_keys(obj: dict, allowed: set[str], where: str, errors: _Errors) -> None:
    for key in obj:
        if key not in allowed:
            errors.add(f"{where}.{key}", f"unknown field; expected one of {sorted(allowed)}")


def _parse_table(t: Any, where: str, errors: _Errors) -> TableConfig | None:
    if not isinstance(t, dict):
        errors.add(where, "expected an object with name, source and replicas")
        return None
    _unknown_keys(t, _TABLE_KEYS, where, errors)
    name = _name(t.get("name"), f"{where}.name", errors)
    source = _location(t.get("source"), f"{where}.source", errors, named=False)
    replicas_raw = t.get("replicas")
    replicas: list[LocationConfig] = []
    if not isinstance(replicas_raw, list) or not replicas_raw:
        errors.add(f"{where}.replicas", "expected a non-empty list of replica locations")
    else:
        for j, r in enumerate(replicas_raw):
            loc = _location(r, f"{where}.replicas[{j}]", errors, named=True)
            if loc is not None:
                replicas.append(loc)
    # 0 means "alert on any lag".
    lag = _non_negative_int(t.get("lag_threshold_seconds", 600), f"{where}.lag_threshold_seconds", errors)
    max_bytes = _positive_int(
        t.get("max_commit_bytes", DEFAULT_MAX_COMMIT_BYTES), f"{where}.max_commit_bytes", errors
    )
    allow_ext = t.get("allow_external_files", False)
    if not isinstance(allow_ext, bool):
        errors.add(f"{where}.allow_external_files", f"expected true or false, got {allow_ext!r}")
    auto_rejoin = t.get("auto_rejoin", False)
    if not isinstance(auto_rejoin, bool):
        errors.add(f"{where}.auto_rejoin", f"expected true or false, got {auto_rejoin!r}")
    history = t.get("history", "full")
    if history not in HISTORY_CHOICES:
        errors.add(f"{where}.history", f"expected one of {list(HISTORY_CHOICES)}, got {history!r}: \"full\" "
                   "backfills every version a replica lacks, \"from_checkpoint\" keeps only history from the "
                   "checkpoint it was seeded at")
    snapshots = None
    if t.get("snapshots") is not None:
        snapshots = _snapshots(t["snapshots"], f"{where}.snapshots", errors, replicas)
    if name is None or source is None or not replicas or len(replicas) != len(replicas_raw):
        return None
    routing = None
    if t.get("routing") is not None:
        routing = _routing(t["routing"], f"{where}.routing", errors, [source.name, *(r.name for r in replicas)])
    names = [r.name for r in replicas]
    for j, r in enumerate(replicas):
        if names.count(r.name) > 1:
            errors.add(f"{where}.replicas[{j}].name", f"duplicate replica name {r.name!r}")
        if r.name == source.name:
            errors.add(f"{where}.replicas[{j}].name", f"{r.name!r} is the source's name; give the replica another")
        if (r.connection, r.container, r.path) == (source.connection, source.container, source.path):
            errors.add(f"{where}.replicas[{j}]", "is the same location as the source; a replica must be elsewhere")
    return TableConfig(
        name=name,
        source=source,
        replicas=tuple(replicas),
        lag_threshold_seconds=600 if lag is None else lag,
        snapshots=snapshots,
        allow_external_files=allow_ext is True,
        max_commit_bytes=max_bytes or DEFAULT_MAX_COMMIT_BYTES,
        routing=routing,
        history=history if history in HISTORY_CHOICES else "full",
        auto_rejoin=auto_rejoin is True,
    )


def _routing(obj: Any, where: str, errors: _Errors, location_names: list[str]) -> RoutingConfig | None:
    if not isinstance(obj, dict) or not obj:
        errors.add(where, 'expected an object mapping a reader region to location names, '
                   'like {"westus": ["eastus", "primary"], "default": ["primary"]}')
        return None
    by_region: list[tuple[str, tuple[str, ...]]] = []
    default = None
    ok = True
    for region, names in obj.items():
        here = f"{where}.{region}"
        if region != "default" and (not isinstance(region, str) or not _REGION_RE.match(region)):
            errors.add(here, "expected an Azure region name (lowercase letters and digits) or 'default' as the key")
            ok = False
            continue
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            errors.add(here, f"expected a non-empty list of location names (one of {location_names}), got {names!r}")
            ok = False
            continue
        for k, n in enumerate(names):
            if n not in location_names:
                errors.add(f"{here}[{k}]", f"unknown location {n!r}; expected one of {location_names} "
                           "(the source's name, default 'primary', or a replica's name)")
                ok = False
            elif names.index(n) != k:
                errors.add(f"{here}[{k}]", f"location {n!r} is listed twice")
                ok = False
        if region == "default":
            default = tuple(names)
        else:
            by_region.append((region, tuple(names)))
    return RoutingConfig(by_region=tuple(by_region), default=default) if ok else None


def _name(value: Any, where: str, errors: _Errors) -> str | None:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        errors.add(where, f"expected a name of letters, digits, '_', '.', '-' (got {value!r})")
        return None
    return value


def _positive_int(value: Any, where: str, errors: _Errors) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        errors.add(where, f"expected a positive whole number, got {value!r}")
        return None
    return value


def _non_negative_int(value: Any, where: str, errors: _Errors) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        errors.add(where, f"expected a whole number of 0 or more, got {value!r}")
        return None
    return value


def _table_path(value: Any, where: str, errors: _Errors) -> str | None:
    if not isinstance(value, str) or not value.strip("/"):
        errors.add(where, f"expected the table's folder inside the container, got {value!r}")
        return None
    path = value.strip("/")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in path or "%" in path:
        errors.add(where, f"expected a plain folder path without '.', '..', '%' or '//' (got {value!r})")
        return None
    if "_delta_log" in parts:
        errors.add(where, f"expected the table root, not a path inside _delta_log (got {value!r})")
        return None
    return path


def _location(obj: Any, where: str, errors: _Errors, *, named: bool, folder: str = "path") -> LocationConfig | None:
    """A table's location (`folder` "path": its root), or a group's (`folder` "prefix": the folder holding its
    tables; "" or absent is the whole container). Either way the result's `path` is that folder."""
    if not isinstance(obj, dict):
        errors.add(where, f"expected an object with connection, container and {folder}")
        return None
    keys = (_LOCATION_KEYS - {"path"}) | {folder}
    _unknown_keys(obj, keys if named else keys - {"retention"}, where, errors)
    if named or obj.get("name") is not None:
        name = _name(obj.get("name"), f"{where}.name", errors)
    else:
        name = DEFAULT_SOURCE_NAME
    region = obj.get("region")
    if region is not None and (not isinstance(region, str) or not _REGION_RE.match(region)):
        errors.add(f"{where}.region", f"expected an Azure region name like 'westeurope' or 'westeu' "
                   f"(lowercase letters and digits), got {region!r}")
        region = None
    connection = obj.get("connection")
    if not isinstance(connection, str) or not _SETTING_RE.match(connection):
        errors.add(f"{where}.connection", f"expected the name of an app setting, got {connection!r}")
        connection = None
    container = obj.get("container")
    if not isinstance(container, str) or not _CONTAINER_RE.match(container):
        errors.add(
            f"{where}.container",
            f"expected a container name (3-63 lowercase letters, digits, '-'), got {container!r}",
        )
        container = None
    if folder == "prefix" and obj.get("prefix", "") in ("", "/"):
        path = ""
    else:
        path = _table_path(obj.get(folder), f"{where}.{folder}", errors)
    retention = None
    if named and obj.get("retention") is not None:
        retention = _retention(obj["retention"], f"{where}.retention", errors)
    if None in (name, connection, container, path):
        return None
    return LocationConfig(name=name, connection=connection, container=container, path=path, retention=retention,
                          region=region)


def _retention(obj: Any, where: str, errors: _Errors) -> RetentionConfig | None:
    if not isinstance(obj, dict):
        errors.add(where, "expected an object with retention_hours and/or retain_versions (and dry_run)")
        return None
    _unknown_keys(obj, _RETENTION_KEYS, where, errors)
    hours = obj.get("retention_hours")
    versions = obj.get("retain_versions")
    if hours is not None:
        hours = _positive_int(hours, f"{where}.retention_hours", errors)
    if versions is not None:
        versions = _positive_int(versions, f"{where}.retain_versions", errors)
    dry_run = obj.get("dry_run", False)
    if not isinstance(dry_run, bool):
        errors.add(f"{where}.dry_run", f"expected true or false, got {dry_run!r}")
        return None
    return RetentionConfig(retention_hours=hours, retain_versions=versions, dry_run=dry_run)


def _snapshots(obj: Any, where: str, errors: _Errors, replicas: list[LocationConfig]) -> SnapshotConfig | None:
    if not isinstance(obj, dict):
        errors.add(where, "expected an object with replica, container, path and keep_last")
        return None
    _unknown_keys(obj, _SNAPSHOT_KEYS, where, errors)
    replica = obj.get("replica")
    if replica not in {r.name for r in replicas}:
        errors.add(f"{where}.replica", f"expected the name of one of this table's replicas, got {replica!r}")
    container = obj.get("container")
    if not isinstance(container, str) or not _CONTAINER_RE.match(container):
        errors.add(f"{where}.container", f"expected a container name, got {container!r}")
    path = _table_path(obj.get("path"), f"{where}.path", errors)
    keep = _positive_int(obj.get("keep_last", 7), f"{where}.keep_last", errors)
    if errors.items:
        return None
    return SnapshotConfig(replica=replica, container=container, path=path, keep_last=keep)


def _check_uniqueness(tables: list[TableConfig], errors: _Errors) -> None:
    seen_names: set[str] = set()
    for i, t in enumerate(tables):
        if t.name in seen_names:
            errors.add(f"tables[{i}].name", f"duplicate table name {t.name!r}")
        seen_names.add(t.name)
    # Nested or equal source roots would route one event to two tables.
    for i, a in enumerate(tables):
        for j, b in enumerate(tables):
            if i < j and (a.source.connection, a.source.container) == (b.source.connection, b.source.container):
                pa, pb = a.source.path + "/", b.source.path + "/"
                if pa.startswith(pb) or pb.startswith(pa):
                    errors.add(
                        f"tables[{j}].source.path",
                        f"overlaps tables[{i}].source.path ({a.source.path!r}); table roots must not nest",
                    )
