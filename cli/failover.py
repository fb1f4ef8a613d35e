"""`python -m cli promote | rejoin | quarantine list|replay | topology restore`: region failover and failback."""

from __future__ import annotations

import json
import sys


def _runtime():
    from cli.__main__ import _runtime as build

    return build()


def _table(runtime, name: str):
    try:
        return runtime.table(name)
    except KeyError:
        raise SystemExit(f"error: table {name!r} is not configured (configured: "
                         f"{runtime.table_names()})") from None


def _location(table, name: str, option: str) -> None:
    """An unknown location name is bad input: list the ones the table has."""
    names = [loc.name for loc in table.locations]
    if name not in names:
        raise SystemExit(f"error: {option} {name!r}: table {table.name} has no such location (its locations: "
                         f"{', '.join(names)}); nothing was changed")


def rejoin_needed(runtime, table, topology, to: str) -> str | None:
    """Why `to` cannot catch up to the primary (ahead of it, or diverged from it), or None.

    A location that holds commits the primary does not have never catches up by waiting: it needs
    rejoin (which quarantines them) first. A primary that does not answer is left to promote.
    """
    from shared.delta.head import find_head, find_source_head
    from shared.delta.source_log import SourceLog
    from shared.errors import ReplicaDiverged, ReplicaUnreachable

    replicator = runtime.replicator(table.name, topology)
    target = replicator.replicas[to]
    source = SourceLog(table, replicator.source_store, replicator.root)
    try:
        primary_head = find_source_head(source)
    except ReplicaUnreachable:
        return None
    head, entries = find_head(target, primary_head or 0)
    if head is None or primary_head is None:
        return None
    if head > primary_head:
        return f"is at version {head}, ahead of the primary {topology.primary} (version {primary_head})"
    try:
        replicator.check_head_matches(to, target, source, head, primary_head, entries)
    except ReplicaDiverged:
        return f"has diverged from the primary {topology.primary}: its version {head} differs from the primary's"
    return None


def _fail(err) -> int:
    from cli.outcome import error_line

    code, line = error_line(err)
    print(line, file=sys.stderr)
    return code


def catch_up_seconds(timeout: float) -> float:
    """Of promote's --timeout (its whole bound), what the catch-up may use: the rest reads and flips."""
    return max(0.0, timeout - min(10.0, timeout / 4))


def _one_of(args, command: str) -> None:
    if (args.table is None) == (args.group is None):
        raise SystemExit(f"error: {command} takes --table T or --group G (one of them); nothing was changed")
    if getattr(args, "consistent", False) and args.group is None:
        raise SystemExit("error: --consistent applies to --group; nothing was changed")


def cmd_promote(args) -> int:
    from shared.errors import PromotionRefused, ReplicationError
    from shared.failover.promote import promote

    from cli.status import require_topology

    _one_of(args, "promote")
    if args.group is not None:
        return _promote_group(args)
    runtime = _runtime()
    table = _table(runtime, args.table)
    _location(table, args.to, "--to")

    def progress(head, primary_head):
        if not args.json:
            print(f"waiting: {args.to} at version {head}, primary at {primary_head}", flush=True)

    try:
        topology = require_topology(runtime, table, "promote")
        if not args.force and topology.primary != args.to:
            reason = rejoin_needed(runtime, table, topology, args.to)
            if reason:
                raise PromotionRefused(
                    f"location {args.to} of table {table.name} {reason}, so it cannot catch up; run rejoin first: "
                    f"python -m cli rejoin --table {table.name} --location {args.to} (its extra commits are "
                    "quarantined, then it catches up), then promote again. Nothing was changed.")
        result = promote(runtime, args.table, args.to, force=args.force, timeout=catch_up_seconds(args.timeout),
                         progress=progress)
    except ReplicationError as err:
        return _fail(err)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        t = result.topology
        print(f"promoted {t.table}: primary {t.primary} (was {t.previous_primary}), epoch {t.epoch}, "
              f"at version {t.promoted_at_version}" + (" (forced)" if result.forced else ""))
        if result.fence_version is not None:
            print(f"fenced {t.previous_primary} at version {result.fence_version}: writers there are refused, "
                  "readers still read")
        if result.forced or result.old_primary_ahead != 0:
            print(f"old primary {t.previous_primary} may hold {result.old_primary_ahead} version(s) beyond "
                  f"{t.promoted_at_version}; when it is back: python -m cli rejoin --table {t.table} "
                  f"--location {t.previous_primary}")
        else:
            print(f"once writers use the new primary: python -m cli rejoin --table {t.table} "
                  f"--location {t.previous_primary} (removes the fence; it becomes a replica)")
        print(f"point writers at the new primary: python -m cli endpoint --table {t.table} --purpose write")
    return 0


def _promote_group(args) -> int:
    from shared.errors import ReplicationError
    from shared.failover.group_promote import promote_group

    runtime = _runtime()
    try:
        result = promote_group(runtime, args.group, args.to, force=args.force, consistent=args.consistent,
                               timeout=catch_up_seconds(args.timeout))
    except ReplicationError as err:
        return _fail(err)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
        return 0
    print(f"promoted group {result.group} to {result.to} (group epoch {result.epoch}): {len(result.tables)} table(s) "
          f"flipped, {len(result.already)} already there" + (" (forced)" if result.forced else ""))
    if result.consistent:
        print(f"  every new primary stands at the group's recovery point {result.as_json()['recoveryPoint']}")
    for t in result.tables:
        extra = f", quarantined {t['quarantinedVersions']}" if t["quarantinedVersions"] else ""
        print(f"  {t['table']}: epoch {t['epoch']} at version {t['promotedAtVersion']}{extra}")
    print(f"when {', '.join(sorted({t['previousPrimary'] for t in result.tables})) or '-'} is back: python -m cli "
          f"rejoin --group {result.group} --location <it>")
    return 0


def _rejoin_group(args) -> int:
    from shared.errors import ReplicationError
    from shared.failover.group_promote import rejoin_group

    runtime = _runtime()
    try:
        result = rejoin_group(runtime, args.group, args.location)
    except ReplicationError as err:
        return _fail(err)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        for t in result.tables:
            print(f"{t['table']}/{t['location']}: quarantined {t['quarantinedVersions'] or 'nothing'}; caught up to "
                  f"version {t['headAfter']}")
        for f in result.failed:
            print(f"{f['table']}: not rejoined: {f['error']}", file=sys.stderr)
    return 1 if result.failed else 0


def cmd_rejoin(args) -> int:
    from cli.status import require_topology
    from shared.errors import ReplicationError
    from shared.failover.rejoin import rejoin

    _one_of(args, "rejoin")
    if args.group is not None:
        if args.dry_run:
            raise SystemExit("error: rejoin --group has no --dry-run; run it per table with --table to preview")
        return _rejoin_group(args)
    runtime = _runtime()
    table = _table(runtime, args.table)
    _location(table, args.location, "--location")
    say = (lambda text: None) if args.json else (lambda text: print(text, flush=True))
    try:
        topology = require_topology(runtime, table, "rejoin")
        if not args.dry_run:
            say(f"rejoin {table.name}/{args.location}: 1/3 comparing its log with the primary {topology.primary}")
            plan = rejoin(runtime, args.table, args.location, dry_run=True)
            say(f"rejoin {table.name}/{args.location}: 2/3 quarantining {len(plan.versions)} version(s), "
                f"{len(plan.log_files)} log files, {plan.data_files} data files, then removing them from its log")
            say(f"rejoin {table.name}/{args.location}: 3/3 catching up from {topology.primary} as a replica")
        result = rejoin(runtime, args.table, args.location, dry_run=args.dry_run)
    except ReplicationError as err:
        return _fail(err)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
        return 0
    what = "would quarantine" if result.dry_run else "quarantined"
    if result.versions:
        fences = f" (fence: {result.fences})" if result.fences else ""
        print(f"{what} versions {result.versions}{fences} of {result.table}/{result.location} (epoch {result.epoch}, "
              f"promoted at version {result.promoted_at_version}): {len(result.log_files)} log files, "
              f"{result.data_files} data files -> {result.quarantine_path}")
    else:
        print(f"{result.table}/{result.location}: nothing beyond version {result.promoted_at_version} to quarantine")
    if not result.dry_run:
        print(f"removed {result.removed} log files; {result.location} caught up to version {result.head_after} "
              "as a replica")
    return 0


def cmd_quarantine(args) -> int:
    from shared.errors import ReplicationError
    from shared.failover.replay import list_quarantine, replay

    from cli.status import require_topology

    runtime = _runtime()
    table = _table(runtime, args.table)
    try:
        require_topology(runtime, table, f"quarantine {args.action}")
        if args.action == "list":
            commits = list_quarantine(runtime, args.table)
            if args.json:
                print(json.dumps([c.as_json() for c in commits], indent=2))
            else:
                print(f"{'LOCATION':<10} {'EPOCH':>5} {'VERSION':>7} {'OPERATION':<17} {'ROWS+':>6} {'FILES+':>6} "
                      f"{'FILES-':>6}  REPLAY")
                for c in commits:
                    replay_as = ("fence (skipped)" if c.fence else "auto (blind append)" if c.blind_append
                                 else "manual")
                    print(f"{c.location:<10} {c.epoch:>5} {c.version:>7} {c.operation:<17} {c.rows_added:>6} "
                          f"{c.files_added:>6} {c.files_removed:>6}  {replay_as}")
            return 0
        if args.epoch is None:
            print("error: quarantine replay needs --epoch E (see `python -m cli quarantine list`)", file=sys.stderr)
            return 2
        result = replay(runtime, args.table, args.epoch, dry_run=args.dry_run)
    except ReplicationError as err:
        return _fail(err)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
        return 0
    verb = "would apply" if result.dry_run else "applied"
    print(f"{verb} versions {result.applied} as appIds {result.app_id}/<commit digest>; "
          f"already applied {result.already_applied}")
    if result.fences:
        print(f"skipped the fence: versions {result.fences} (no rows)")
    for c in result.needs_review:
        print(f"needs a person: version {c.version} ({c.operation}, +{c.files_added}/-{c.files_removed} files) "
              "was not applied")
    if result.primary_head is not None:
        print(f"primary now at version {result.primary_head}")
    return 0


def cmd_topology(args) -> int:
    from shared.errors import ReplicationError
    from shared.failover.markers import restore_topology

    runtime = _runtime()
    _table(runtime, args.table)
    try:
        restored = restore_topology(runtime, args.table)
    except ReplicationError as err:
        return _fail(err)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(restored.as_json(), indent=2))
    else:
        print(f"restored the topology of {restored.table}: primary {restored.primary}, epoch {restored.epoch}, "
              f"promoted at version {restored.promoted_at_version}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("promote", help="make another location of a table its writable primary",
                       description="Planned (writers stopped, the primary answers): catch the location up, then "
                                   "flip. Unplanned (--force, the primary's region is down): flip at the location's "
                                   "own head; rejoin the old primary when it returns.")
    p.add_argument("--table", help="the table (or --group)")
    p.add_argument("--group", help="every table of this group, in one step (a planned one flips none unless all can)")
    p.add_argument("--consistent", action="store_true",
                   help="with --group: first quarantine on --to each table's versions above the group's recovery "
                        "point there, so the new primaries are one moment (replayable: quarantine replay)")
    p.add_argument("--to", required=True, metavar="LOCATION", help="the location to promote (a name from the "
                                                                  "configuration, e.g. westeu)")
    p.add_argument("--force", action="store_true",
                   help="the primary does not answer: flip at the --to location's own head without waiting")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="seconds promote may take in all (default 300); planned, most of it is the wait for the "
                        "--to location to catch up (all but min(10, a quarter) of it)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rejoin", help="make a former primary a replica again, quarantining its outage commits")
    p.add_argument("--table", help="the table (or --group)")
    p.add_argument("--group", help="rejoin the location in every table of this group that was promoted away from it")
    p.add_argument("--location", required=True, help="the former primary (a location name, e.g. eastus)")
    p.add_argument("--dry-run", action="store_true", help="say what would be quarantined; change nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_rejoin)

    p = sub.add_parser("quarantine", help="list quarantined commits, or replay their blind appends")
    p.add_argument("action", choices=["list", "replay"], help="list: what rejoin quarantined; replay: apply its "
                                                              "blind appends to the primary (exactly once)")
    p.add_argument("--table", required=True, help="the table")
    p.add_argument("--epoch", type=int, help="replay: the quarantine's epoch (see `quarantine list`)")
    p.add_argument("--dry-run", action="store_true", help="replay: say what would be applied; change nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_quarantine)

    p = sub.add_parser("topology", help="restore a missing ReplicationTopology from the promotion markers")
    p.add_argument("action", choices=["restore"],
                   help="restore: rebuild the table's topology rows from the newest promotion marker "
                        "(_quarantine/<table path>/topology/epoch-<E>.json) found in its locations")
    p.add_argument("--table", required=True, help="the configured table whose topology to restore")
    p.add_argument("--json", action="store_true", help="print the restored topology as JSON")
    p.set_defaults(func=cmd_topology)
