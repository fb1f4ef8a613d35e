"""A group's status as the lag check last stored it: its tables' rows and its recovery point per location."""

from __future__ import annotations

from shared.groups.members import split_name


def stored_group_status(runtime, name: str) -> dict | None:
    """`{"replicas": [...], "groups": [...]}` for group `name` from the status tables (what the last lag
    check measured; `status --group` measures now), or None when no such group is configured."""
    if all(g.name != name for g in runtime.config.groups):
        return None
    rows = [row.as_json() for row in runtime.status_store().list_rows()
            if (split_name(row.table) or ("", ""))[0] == name]
    points = [{**point.as_json(), "checkedAt": point.checked_at.isoformat(), "alertState": state}
              for point, state in runtime.group_status().rows(name)]
    return {"replicas": sorted(rows, key=lambda r: (r["table"], r["replica"])), "groups": points}
