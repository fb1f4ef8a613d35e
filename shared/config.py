"""Replication configuration: REPLICATION_CONFIG / REPLICATION_CONFIG_FILE -> frozen dataclasses.

The only module that reads the environment. Everything is validated at once; a
`ConfigError` names the field path and what is expected. Connection *names* are stored,
never their values, so a config object is safe to log.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from shared.errors import ConfigError

CONFIG_SETTING = "REPLICATION_CONFIG"
CONFIG_FILE_SETTING = "REPLICATION_CONFIG_FILE"
DEFAULT_MAX_COMMIT_BYTES = 256 * 1024 * 1024

# What "UseDevelopmentStorage=true" means: Azurite's well-known account on its default ports.
DEVELOPMENT_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_SETTING_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LocationConfig:
    """Where a table lives: a connection name, a container and a path inside it."""

    name: str
    connection: str
    container: str
    path: str
    retention: "RetentionConfig | None" = None

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
class TableConfig:
    name: str
    source: LocationConfig
    replicas: tuple[LocationConfig, ...]
    lag_threshold_seconds: int = 600
    snapshots: SnapshotConfig | None = None
    allow_external_files: bool = False
    max_commit_bytes: int = DEFAULT_MAX_COMMIT_BYTES

    def replica(self, name: str) -> LocationConfig:
        for replica in self.replicas:
            if replica.name == name:
                return replica
        raise KeyError(name)


@dataclass(frozen=True)
class ReplicationConfig:
    tables: tuple[TableConfig, ...]

    def table(self, name: str) -> TableConfig:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(name)

    def connection_names(self) -> list[str]:
        names: list[str] = []
        for table in self.tables:
            for loc in (table.source, *table.replicas):
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


def load_config(environ: Mapping[str, str] | None = None) -> ReplicationConfig:
    """Load and validate the configuration named by the environment.

    Args:
        environ: the settings (default `os.environ`).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: neither or both settings are set, the file is unreadable, or the JSON is
            invalid; the message names every bad field.
    """
    env = os.environ if environ is None else environ
    inline = env.get(CONFIG_SETTING, "").strip()
    path = env.get(CONFIG_FILE_SETTING, "").strip()
    if inline and path:
        raise ConfigError(
            f"both {CONFIG_SETTING} and {CONFIG_FILE_SETTING} are set; set only one of them"
        )
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as err:
            raise ConfigError(
                f"{CONFIG_FILE_SETTING}: cannot read {path!r} ({err.strerror}); "
                "point it at a readable JSON file"
            ) from err
        source = f"{CONFIG_FILE_SETTING} ({path})"
    elif inline:
        text, source = inline, CONFIG_SETTING
    else:
        raise ConfigError(
            f"no replication configuration: set {CONFIG_SETTING} to the JSON configuration "
            f"or {CONFIG_FILE_SETTING} to the path of a JSON file (see README, Configuration)"
        )
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{source} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from err
    return parse_config(raw)


def parse_config(raw: Any) -> ReplicationConfig:
    """Validate a decoded configuration document; see `load_config`."""
    errors = _Errors()
    if not isinstance(raw, dict):
        errors.add("(root)", 'expected a JSON object like {"tables": [...]}')
        errors.raise_if_any()
    _unknown_keys(raw, {"tables"}, "(root)", errors)
    tables_raw = raw.get("tables")
    if not isinstance(tables_raw, list) or not tables_raw:
        errors.add("tables", "expected a non-empty list of tables")
        errors.raise_if_any()
    tables = []
    for i, t in enumerate(tables_raw):
        table = _parse_table(t, f"tables[{i}]", errors)
        if table is not None:
            tables.append(table)
    _check_uniqueness(tables, errors)
    errors.raise_if_any()
    return ReplicationConfig(tables=tuple(tables))


_TABLE_KEYS = {
    "name", "source", "replicas", "lag_threshold_seconds", "snapshots",
    "allow_external_files", "max_commit_bytes",
}
_LOCATION_KEYS = {"name", "connection", "container", "path", "retention"}
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
    lag = _positive_int(t.get("lag_threshold_seconds", 600), f"{where}.lag_threshold_seconds", errors)
    max_bytes = _positive_int(
        t.get("max_commit_bytes", DEFAULT_MAX_COMMIT_BYTES), f"{where}.max_commit_bytes", errors
    )
    allow_ext = t.get("allow_external_files", False)
    if not isinstance(allow_ext, bool):
        errors.add(f"{where}.allow_external_files", f"expected true or false, got {allow_ext!r}")
    snapshots = None
    if t.get("snapshots") is not None:
        snapshots = _snapshots(t["snapshots"], f"{where}.snapshots", errors, replicas)
    if name is None or source is None or not replicas or len(replicas) != len(replicas_raw):
        return None
    names = [r.name for r in replicas]
    for j, r in enumerate(replicas):
        if names.count(r.name) > 1:
            errors.add(f"{where}.replicas[{j}].name", f"duplicate replica name {r.name!r}")
        if (r.connection, r.container, r.path) == (source.connection, source.container, source.path):
            errors.add(f"{where}.replicas[{j}]", "is the same location as the source; a replica must be elsewhere")
    return TableConfig(
        name=name,
        source=LocationConfig("source", source.connection, source.container, source.path),
        replicas=tuple(replicas),
        lag_threshold_seconds=lag or 600,
        snapshots=snapshots,
        allow_external_files=allow_ext is True,
        max_commit_bytes=max_bytes or DEFAULT_MAX_COMMIT_BYTES,
    )


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


def _location(obj: Any, where: str, errors: _Errors, *, named: bool) -> LocationConfig | None:
    if not isinstance(obj, dict):
        errors.add(where, "expected an object with connection, container and path")
        return None
    _unknown_keys(obj, _LOCATION_KEYS if named else _LOCATION_KEYS - {"name", "retention"}, where, errors)
    name = _name(obj.get("name"), f"{where}.name", errors) if named else "source"
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
    path = _table_path(obj.get("path"), f"{where}.path", errors)
    retention = None
    if named and obj.get("retention") is not None:
        retention = _retention(obj["retention"], f"{where}.retention", errors)
    if None in (name, connection, container, path):
        return None
    return LocationConfig(name=name, connection=connection, container=container, path=path, retention=retention)


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


def resolve_connection(name: str, environ: Mapping[str, str] | None = None) -> ConnectionSettings:
    """Resolve a connection name the way Azure Functions does.

    `<NAME>` holds a connection string (account key or SAS; Azurite included), or
    `<NAME>__blobServiceUri` (alias `<NAME>__serviceUri`) selects identity-based access, with
    optional `<NAME>__credential` = managedidentity and `<NAME>__clientId`.

    Raises:
        ConfigError: nothing is defined under the name, or the value is malformed. The
            message names the setting, never its value.
    """
    env = os.environ if environ is None else environ
    value = env.get(name, "").strip()
    uri = (env.get(f"{name}__blobServiceUri") or env.get(f"{name}__serviceUri") or "").strip()
    if value:
        return _from_connection_string(name, value)
    if uri:
        parsed = urlparse(uri)
        if parsed.scheme not in ("https", "http") or not parsed.netloc or parsed.query:
            raise ConfigError(
                f"setting {name}__blobServiceUri is not a blob service URL like "
                "https://<account>.blob.core.windows.net (no query string)"
            )
        account = _account_from_url(parsed)
        credential = (env.get(f"{name}__credential") or "").strip().lower() or None
        if credential not in (None, "managedidentity"):
            raise ConfigError(f"setting {name}__credential must be 'managedidentity' or unset")
        return ConnectionSettings(
            name=name,
            account_name=account,
            blob_service_url=uri.rstrip("/"),
            credential_kind=credential,
            client_id=(env.get(f"{name}__clientId") or "").strip() or None,
        )
    raise ConfigError(
        f"connection {name}: setting {name} is not defined; set it to a storage connection "
        f"string or set {name}__blobServiceUri for identity-based access"
    )


def _account_from_url(parsed) -> str:
    host = parsed.hostname or ""
    if host in ("127.0.0.1", "localhost") or host.replace(".", "").isdigit():
        # Azurite and other emulators are path-style: /<account>
        return parsed.path.strip("/").split("/")[0]
    return host.split(".")[0]


def _from_connection_string(name: str, value: str) -> ConnectionSettings:
    if value == "UseDevelopmentStorage=true":
        value = DEVELOPMENT_STORAGE
    parts: dict[str, str] = {}
    for piece in value.split(";"):
        if not piece.strip():
            continue
        key, sep, val = piece.partition("=")
        if not sep:
            raise ConfigError(
                f"setting {name} is not a storage connection string (expected Key=Value pairs "
                "separated by ';')"
            )
        parts[key.strip().lower()] = val.strip()
    account = parts.get("accountname")
    endpoint = parts.get("blobendpoint")
    if endpoint:
        parsed = urlparse(endpoint)
        if not parsed.scheme or not parsed.netloc:
            raise ConfigError(f"setting {name}: BlobEndpoint is not a URL")
        account = account or _account_from_url(parsed)
        url = endpoint.rstrip("/")
    elif account:
        protocol = parts.get("defaultendpointsprotocol", "https")
        suffix = parts.get("endpointsuffix", "core.windows.net")
        url = f"{protocol}://{account}.blob.{suffix}"
    else:
        raise ConfigError(
            f"setting {name} is not a storage connection string: it has neither AccountName nor BlobEndpoint"
        )
    if not (parts.get("accountkey") or parts.get("sharedaccesssignature")):
        raise ConfigError(
            f"setting {name} has no AccountKey or SharedAccessSignature; use {name}__blobServiceUri "
            "for identity-based access instead"
        )
    return ConnectionSettings(name=name, account_name=account, blob_service_url=url, connection_string=value)


STATUS_CONNECTION_SETTING = "STATUS_CONNECTION"
DEFAULT_STATUS_CONNECTION = "AzureWebJobsStorage"
ALERT_ENDPOINT_SETTING = "ALERT_TOPIC_ENDPOINT"
ALERT_KEY_SETTING = "ALERT_TOPIC_KEY"


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


def resolve_status_connection(environ: Mapping[str, str] | None = None) -> TableServiceSettings:
    """STATUS_CONNECTION (default AzureWebJobsStorage): a connection string, or
    `<NAME>__tableServiceUri` for identity-based access.

    Raises:
        ConfigError: the named connection is not defined.
    """
    env = os.environ if environ is None else environ
    name = (env.get(STATUS_CONNECTION_SETTING) or DEFAULT_STATUS_CONNECTION).strip()
    value = (env.get(name) or "").strip()
    if value == "UseDevelopmentStorage=true":
        value = DEVELOPMENT_STORAGE
    if value:
        return TableServiceSettings(name=name, connection_string=value)
    uri = (env.get(f"{name}__tableServiceUri") or "").strip()
    if uri:
        return TableServiceSettings(name=name, endpoint=uri.rstrip("/"))
    raise ConfigError(
        f"{STATUS_CONNECTION_SETTING}: setting {name} is not defined; set it to a storage connection "
        f"string or set {name}__tableServiceUri for identity-based access"
    )


def resolve_alerts(environ: Mapping[str, str] | None = None) -> AlertSettings | None:
    """ALERT_TOPIC_ENDPOINT (+ ALERT_TOPIC_KEY, or identity); None when alerts are off."""
    env = os.environ if environ is None else environ
    endpoint = (env.get(ALERT_ENDPOINT_SETTING) or "").strip()
    if not endpoint:
        return None
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("https", "http") or not parsed.netloc or parsed.query:
        raise ConfigError(f"{ALERT_ENDPOINT_SETTING} must be an Event Grid topic URL without a query string")
    return AlertSettings(endpoint=endpoint, key=(env.get(ALERT_KEY_SETTING) or "").strip() or None)


TELEMETRY_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"


def resolve_telemetry(environ: Mapping[str, str] | None = None) -> str | None:
    """The Application Insights connection string (secret), or None: metrics are then not exported."""
    env = os.environ if environ is None else environ
    return (env.get(TELEMETRY_SETTING) or "").strip() or None
