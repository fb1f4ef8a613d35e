"""Validation of the `consolidations` section: sources, target, keys and limits (see parse.py)."""

from __future__ import annotations

import re
from typing import Any

from shared.config.model import (
    DEFAULT_MAX_COMMIT_BYTES,
    DEFAULT_MAX_COMMITS_PER_RUN,
    DEFAULT_MAX_MERGE_BYTES,
    DEFAULT_REGION_COLUMN,
    ConsolidationConfig,
    ConsolidationSource,
    TableConfig,
)
from shared.config.parse import _Errors, _location, _name, _positive_int, _unknown_keys

_CONSOLIDATION_KEYS = {
    "name", "sources", "target", "keys", "on_match", "region_column", "partition_by",
    "max_commits_per_run", "max_merge_bytes",
}
_ON_MATCH = ("ignore", "update")
_COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _columns(value: Any, where: str, errors: _Errors, *, non_empty: bool) -> tuple[str, ...] | None:
    if not isinstance(value, list) or (non_empty and not value):
        errors.add(where, f"expected a {'non-empty ' if non_empty else ''}list of column names, got {value!r}")
        return None
    bad = [c for c in value if not isinstance(c, str) or not _COLUMN_RE.match(c)]
    if bad:
        errors.add(where, f"expected column names of letters, digits and '_' (not starting with a digit), "
                   f"got {bad!r}")
        return None
    if len(set(value)) != len(value):
        errors.add(where, f"lists a column twice: {value!r}")
        return None
    return tuple(value)


def parse_consolidation(c: Any, where: str, errors: _Errors, tables: list[TableConfig],
                   table_names: list) -> ConsolidationConfig | None:
    if not isinstance(c, dict):
        errors.add(where, "expected an object with name, sources, target and keys")
        return None
    _unknown_keys(c, _CONSOLIDATION_KEYS, where, errors)
    count = len(errors.items)
    name = _name(c.get("name"), f"{where}.name", errors)
    sources: list[ConsolidationSource] = []
    sources_raw = c.get("sources")
    if not isinstance(sources_raw, list) or not sources_raw:
        errors.add(f"{where}.sources", "expected a non-empty list of sources: a configured table's name, "
                   "or a location with connection, container, path and region")
    else:
        for j, raw in enumerate(sources_raw):
            source = _consolidation_source(raw, f"{where}.sources[{j}]", errors, tables, table_names)
            if source is None:
                continue
            if any(s.name == source.name for s in sources):
                errors.add(f"{where}.sources[{j}]", f"a second source named {source.name!r}; give one a distinct "
                           "name (a location's name defaults to its region)")
            sources.append(source)
    target = _location(c.get("target"), f"{where}.target", errors, named=False)
    if target is not None:
        if target.region is None:
            errors.add(f"{where}.target.region", "expected the region of the global table, e.g. 'westeu'")
        for j, source in enumerate(sources):
            loc = source.location
            if (loc.connection, loc.container, loc.path) == (target.connection, target.container, target.path):
                errors.add(f"{where}.target", f"is the same location as sources[{j}]; the global table must be "
                           "another table")
    keys = _columns(c.get("keys"), f"{where}.keys", errors, non_empty=True)
    on_match = c.get("on_match", "ignore")
    if on_match not in _ON_MATCH:
        errors.add(f"{where}.on_match", f"expected 'ignore' (insert-only) or 'update', got {on_match!r}")
    region_column = c.get("region_column", DEFAULT_REGION_COLUMN)
    if not isinstance(region_column, str) or not _COLUMN_RE.match(region_column):
        errors.add(f"{where}.region_column", f"expected a column name, got {region_column!r}")
    partition_by = _columns(c.get("partition_by", []), f"{where}.partition_by", errors, non_empty=False)
    max_commits = _positive_int(c.get("max_commits_per_run", DEFAULT_MAX_COMMITS_PER_RUN),
                                f"{where}.max_commits_per_run", errors)
    max_bytes = _positive_int(c.get("max_merge_bytes", DEFAULT_MAX_MERGE_BYTES), f"{where}.max_merge_bytes", errors)
    if len(errors.items) > count:
        return None
    return ConsolidationConfig(
        name=name, sources=tuple(sources), target=target, keys=keys, on_match=on_match,
        region_column=region_column, partition_by=partition_by, max_commits_per_run=max_commits,
        max_merge_bytes=max_bytes,
    )


def _consolidation_source(raw: Any, where: str, errors: _Errors, tables: list[TableConfig],
                          table_names: list) -> ConsolidationSource | None:
    if isinstance(raw, str):
        if raw not in table_names:
            errors.add(where, f"names no configured table ({raw!r}); configured tables: "
                       f"{[n for n in table_names if isinstance(n, str)]}")
            return None
        table = next((t for t in tables if t.name == raw), None)
        if table is None:
            return None  # the table itself is invalid and reported under tables[]
        if table.source.region is None:
            i = table_names.index(raw)
            errors.add(where, f"table {raw!r} has no region on its source; set tables[{i}].source.region "
                       "(its rows get that region in the region column)")
            return None
        return ConsolidationSource(name=raw, location=table.source, table=raw)
    if not isinstance(raw, dict):
        errors.add(where, "expected a configured table's name or a location object")
        return None
    location = _location(raw, where, errors, named=False)
    if location is None:
        return None
    if location.region is None:
        errors.add(f"{where}.region", "expected the source's region, e.g. 'eastus'")
        return None
    name = raw.get("name") or location.region
    return ConsolidationSource(name=name, location=location)
