"""`python -m cli status`: every location's version, lag and state, with the reason in the table.

Status never reports what it cannot know: it reads the topology (which location is the primary)
first and refuses when it cannot, and a primary without a Delta log is `error`, never healthy.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

HEALTHY_STATES = ("healthy", "lagging")


def require_topology(runtime, table, command: str):
    """The table's topology, read now from the function app's storage; refuse rather than guess.

    Without it a command would act on the configured source, which after a promotion is a fenced
    former primary: writers pointed there, or replication from there, lose data.

    Raises:
        TopologyUnavailable: no function app storage is configured, or it cannot be read.
    """
    from cli.outcome import refused_access
    from shared.config.settings import resolve_status_connection
    from shared.errors import AccessDenied, ConfigError, ReplicationError, TopologyUnavailable

    why = (f"{command} needs the topology of table {table.name} (which location is its primary) and will not "
           "guess it from the configuration: after a promotion the configured source is fenced. Nothing was done.")
    try:
        store = runtime.topology_store()
    except ConfigError as err:
        raise TopologyUnavailable(f"cannot read the topology: {err}. Set AzureWebJobsStorage (or "
                                  f"STATUS_CONNECTION) to the function app's storage. {why}") from err
    where = f"the function app's storage ({resolve_status_connection().name})"
    try:
        return store.get(table)
    except ReplicationError as err:
        if refused_access(err):
            hint = (f"grant the identity Storage Table Data Contributor on {where}, or fix the key in that "
                    "setting")
            raise AccessDenied(f"access denied: cannot read the topology from {where}: {err} {hint}. {why}",
                               hint=hint) from err
        raise TopologyUnavailable(f"cannot read the topology from {where}: {err} {why}") from err


def no_log_detail(location) -> str:
    return (f"source holds no Delta log at {location.connection}:{location.container}/{location.path}/_delta_log; "
            "check the source's container and path in the configuration (or write the table's first commit)")


def table_rows(runtime, table, *, lags: list | None = None) -> list[dict]:
    """One row per non-primary location, measured now (each measurement also appended to `lags`)."""
    from shared.health.lag import measure_table

    topology = require_topology(runtime, table, "status")
    replicator = runtime.replicator(table.name, topology)
    rows = []
    for lag in measure_table(replicator):
        if lags is not None:
            lags.append(lag)
        state, detail = lag.status.value, lag.detail
        if lag.source_version is None and state in HEALTHY_STATES:
            # Nothing to compare with is not "up to date": a typo in the path looks exactly like this.
            state, detail = "error", no_log_detail(table.location(topology.primary))
        elif state == "diverged" and topology.epoch > 0:
            detail = (f"{detail} If it was the primary before a failover (its outage commits): python -m cli "
                      f"rejoin --table {table.name} --location {lag.replica}")
        rows.append({"table": lag.table, "replica": lag.replica, "primary": topology.primary,
                     "sourceVersion": lag.source_version, "replicaVersion": lag.replica_version,
                     "versionLag": lag.version_lag, "lagSeconds": lag.lag_seconds, "state": state, "detail": detail})
    return rows


def render(rows: list[dict]) -> list[str]:
    lines = [f"{'TABLE':<16} {'REPLICA':<12} {'SOURCE':>7} {'REPLICA':>7} {'LAG':>5} {'TIME LAG':>9}  STATE"]
    for r in rows:
        line = (f"{r['table']:<16} {r['replica']:<12} {str(r['sourceVersion']):>7} {str(r['replicaVersion']):>7} "
                f"{r['versionLag']:>5} {r['lagSeconds']:>8.1f}s  {r['state']}")
        if r["state"] not in HEALTHY_STATES and r["detail"]:
            line += f"  {' '.join(r['detail'].split())}"
        lines.append(line)
    return lines


def cmd_status(args) -> int:
    from cli.__main__ import _runtime, _tables

    if getattr(args, "watch", False):
        from cli.watch import watch

        return watch(args, lambda a: cmd_status(argparse.Namespace(**{**vars(a), "watch": False})))
    runtime = _runtime()
    groups: list[dict] = []
    try:
        rows = []
        if getattr(args, "group", None):
            rows, groups = group_status(runtime, args.group)
        else:
            for table in _tables(runtime, args.table):
                rows += table_rows(runtime, table)
        from cli.consolidate import print_status, status_rows

        consolidations = status_rows(runtime) if not getattr(args, "group", None) else []
    finally:
        runtime.close()
    if args.json:
        doc = {"checkedAt": datetime.now(timezone.utc).isoformat(), "replicas": rows, "consolidations": consolidations}
        if getattr(args, "group", None):
            doc["groups"] = groups
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join(render(rows)))
        for g in groups:
            print(f"group {g['group']} at {g['replica']}: recovery point {g['recoveryPoint'] or 'unknown'} "
                  f"({g['recoveryPointAgeSeconds']} s ago), {g['tablesBehind']} of {g['tables']} tables behind")
        print_status(consolidations)
    return 0 if all(r["state"] in HEALTHY_STATES for r in rows) else 1


def group_status(runtime, name: str) -> tuple[list[dict], list[dict]]:
    """Every table of group `name` measured now, and the group's recovery point at each location."""
    from shared.errors import ReplicationError
    from shared.health.recovery_point import group_points

    try:
        group = runtime.config.group(name)
    except KeyError:
        raise SystemExit(f"error: group {name!r} is not configured (configured: "
                         f"{', '.join(g.name for g in runtime.config.groups) or 'none'})") from None
    runtime.groups.sweep(name)
    rows, lags, previous = [], [], {}
    for table in runtime.groups.members(name):
        rows += table_rows(runtime, table, lags=lags)
        try:  # what was known of an unreachable location (its CaughtUpAt); none when the host storage is down
            previous.update({(table.name, r.replica): r for r in runtime.status_store().list_rows(table=table.name)})
        except ReplicationError:
            pass
    now = max((lag.checked_at for lag in lags), default=datetime.now(timezone.utc))
    return rows, [p.as_json() for p in group_points(group, lags, previous, now)]
