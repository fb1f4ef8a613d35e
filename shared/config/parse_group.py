"""Validation of the `groups[]` section: every Delta table under a prefix, replicated as one group.

A group's locations carry a `prefix` (the folder holding its tables; "" or absent: the whole
container) where a table's carry a `path`; every other field is checked as a table's is, by the
same helpers, so an option means the same thing in both places.
"""

from __future__ import annotations

from typing import Any

from shared.config.model import DEFAULT_MAX_COMMIT_BYTES, GroupConfig, LocationConfig
from shared.config.parse import (
    _CONTAINER_RE,
    _REGION_RE,
    _SETTING_RE,
    DEFAULT_SOURCE_NAME,
    HISTORY_CHOICES,
    _Errors,
    _name,
    _non_negative_int,
    _positive_int,
    _retention,
    _routing,
    _snapshots,
    _table_path,
    _unknown_keys,
)

_GROUP_KEYS = {
    "name", "source", "replicas", "routing", "lag_threshold_seconds", "rpo_threshold_seconds", "include",
    "exclude", "snapshots", "allow_external_files", "max_commit_bytes", "history", "auto_rejoin",
}
_PLACE_KEYS = {"name", "connection", "container", "prefix", "region", "retention"}


def parse_group(g: Any, where: str, errors: _Errors) -> GroupConfig | None:
    if not isinstance(g, dict):
        errors.add(where, "expected an object with name, source and replicas")
        return None
    _unknown_keys(g, _GROUP_KEYS, where, errors)
    name = _name(g.get("name"), f"{where}.name", errors)
    source = _place(g.get("source"), f"{where}.source", errors, named=False)
    replicas_raw = g.get("replicas")
    replicas: list[LocationConfig] = []
    if not isinstance(replicas_raw, list) or not replicas_raw:
        errors.add(f"{where}.replicas", "expected a non-empty list of replica locations")
        replicas_raw = []
    for j, r in enumerate(replicas_raw):
        loc = _place(r, f"{where}.replicas[{j}]", errors, named=True)
        if loc is not None:
            replicas.append(loc)
    lag = _non_negative_int(g.get("lag_threshold_seconds", 600), f"{where}.lag_threshold_seconds", errors)
    rpo = None
    if g.get("rpo_threshold_seconds") is not None:
        rpo = _non_negative_int(g["rpo_threshold_seconds"], f"{where}.rpo_threshold_seconds", errors)
    max_bytes = _positive_int(g.get("max_commit_bytes", DEFAULT_MAX_COMMIT_BYTES), f"{where}.max_commit_bytes",
                              errors)
    include = _globs(g.get("include", ["*"]), f"{where}.include", errors, allow_empty=False)
    exclude = _globs(g.get("exclude", []), f"{where}.exclude", errors, allow_empty=True)
    flags = {}
    for key in ("allow_external_files", "auto_rejoin"):
        flags[key] = g.get(key, False)
        if not isinstance(flags[key], bool):
            errors.add(f"{where}.{key}", f"expected true or false, got {flags[key]!r}")
    history = g.get("history", "full")
    if history not in HISTORY_CHOICES:
        errors.add(f"{where}.history", f"expected one of {list(HISTORY_CHOICES)}, got {history!r}")
    snapshots = None
    if g.get("snapshots") is not None:
        snapshots = _snapshots(g["snapshots"], f"{where}.snapshots", errors, replicas)
    if None in (name, source, include, exclude) or not replicas or len(replicas) != len(replicas_raw):
        return None
    routing = None
    if g.get("routing") is not None:
        routing = _routing(g["routing"], f"{where}.routing", errors, [source.name, *(r.name for r in replicas)])
    names = [r.name for r in replicas]
    for j, r in enumerate(replicas):
        if names.count(r.name) > 1:
            errors.add(f"{where}.replicas[{j}].name", f"duplicate replica name {r.name!r}")
        if r.name == source.name:
            errors.add(f"{where}.replicas[{j}].name", f"{r.name!r} is the source's name; give the replica another")
    return GroupConfig(
        name=name, source=source, replicas=tuple(replicas), include=include, exclude=exclude,
        lag_threshold_seconds=600 if lag is None else lag, rpo_threshold_seconds=rpo, routing=routing,
        snapshots=snapshots, allow_external_files=flags["allow_external_files"] is True,
        max_commit_bytes=max_bytes or DEFAULT_MAX_COMMIT_BYTES,
        history=history if history in HISTORY_CHOICES else "full", auto_rejoin=flags["auto_rejoin"] is True)


def _globs(value: Any, where: str, errors: _Errors, *, allow_empty: bool) -> tuple[str, ...] | None:
    if (not isinstance(value, list) or (not value and not allow_empty)
            or not all(isinstance(v, str) and v.strip("/") for v in value)):
        errors.add(where, f"expected a {'' if allow_empty else 'non-empty '}list of glob patterns over the path "
                   f"relative to the prefix, like [\"sales/*\"], got {value!r}")
        return None
    return tuple(v.strip("/") for v in value)


def _place(obj: Any, where: str, errors: _Errors, *, named: bool) -> LocationConfig | None:
    """A group's source or replica: a table location whose `path` is the group's prefix."""
    if not isinstance(obj, dict):
        errors.add(where, "expected an object with connection, container and prefix")
        return None
    _unknown_keys(obj, _PLACE_KEYS if named else _PLACE_KEYS - {"retention"}, where, errors)
    if named or obj.get("name") is not None:
        name = _name(obj.get("name"), f"{where}.name", errors)
    else:
        name = DEFAULT_SOURCE_NAME
    region = obj.get("region")
    if region is not None and (not isinstance(region, str) or not _REGION_RE.match(region)):
        errors.add(f"{where}.region", f"expected an Azure region name like 'westeu' (lowercase letters and "
                   f"digits), got {region!r}")
        region = None
    connection = obj.get("connection")
    if not isinstance(connection, str) or not _SETTING_RE.match(connection):
        errors.add(f"{where}.connection", f"expected the name of an app setting, got {connection!r}")
        connection = None
    container = obj.get("container")
    if not isinstance(container, str) or not _CONTAINER_RE.match(container):
        errors.add(f"{where}.container", f"expected a container name (3-63 lowercase letters, digits, '-'), "
                   f"got {container!r}")
        container = None
    prefix_raw = obj.get("prefix", "")
    prefix = "" if prefix_raw in ("", "/") else _table_path(prefix_raw, f"{where}.prefix", errors)
    retention = None
    if named and obj.get("retention") is not None:
        retention = _retention(obj["retention"], f"{where}.retention", errors)
    if None in (name, connection, container, prefix):
        return None
    return LocationConfig(name=name, connection=connection, container=container, path=prefix, retention=retention,
                          region=region)
