"""Validation of the `groups[]` section: every Delta table under a prefix, replicated as one group.

A group's locations carry a `prefix` (the folder holding its tables; "" or absent: the whole
container) where a table's carry a `path`; every other field is checked as a table's is, by the
same helpers, so an option means the same thing in both places.
"""

from __future__ import annotations

from typing import Any

from shared.config.model import DEFAULT_MAX_COMMIT_BYTES, GroupConfig, LocationConfig
from shared.config.parse import (
    HISTORY_CHOICES,
    _Errors,
    _location,
    _name,
    _non_negative_int,
    _positive_int,
    _routing,
    _snapshots,
    _unknown_keys,
)

_GROUP_KEYS = {
    "name", "source", "replicas", "routing", "lag_threshold_seconds", "rpo_threshold_seconds", "include",
    "exclude", "snapshots", "allow_external_files", "max_commit_bytes", "history", "auto_rejoin",
}


def parse_group(g: Any, where: str, errors: _Errors) -> GroupConfig | None:
    if not isinstance(g, dict):
        errors.add(where, "expected an object with name, source and replicas")
        return None
    _unknown_keys(g, _GROUP_KEYS, where, errors)
    name = _name(g.get("name"), f"{where}.name", errors)
    source = _location(g.get("source"), f"{where}.source", errors, named=False, folder="prefix")
    replicas_raw = g.get("replicas")
    replicas: list[LocationConfig] = []
    if not isinstance(replicas_raw, list) or not replicas_raw:
        errors.add(f"{where}.replicas", "expected a non-empty list of replica locations")
        replicas_raw = []
    for j, r in enumerate(replicas_raw):
        loc = _location(r, f"{where}.replicas[{j}]", errors, named=True, folder="prefix")
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
