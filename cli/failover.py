"""`python -m cli promote | rejoin | quarantine list|replay | topology restore`: region failover and failback."""

from __future__ import annotations

import json
import sys


def _runtime():
    from shared.config.settings import load_config
    from shared.runtime import ReplicationRuntime

    return ReplicationRuntime(load_config())


def _table(runtime, name: str):
    try:
        return runtime.config.table(name)
    except KeyError:
        raise SystemExit(f"error: table {name!r} is not configured (configured: "
                         f"{', '.join(t.name for t in runtime.config.tables)})") from None


def _fail(err) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 1


def cmd_promote(args) -> int:
    from shared.errors import ReplicationError
    from shared.failover.promote import promote

    runtime = _runtime()
    _table(runtime, args.table)

    def progress(head, primary_head):
        if not args.json:
            print(f"waiting: {args.to} at version {head}, primary at {primary_head}", flush=True)

    try:
        result = promote(runtime, args.table, args.to, force=args.force, timeout=args.timeout, progress=progress)
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


def cmd_rejoin(args) -> int:
    from shared.errors import ReplicationError
    from shared.failover.rejoin import rejoin

    runtime = _runtime()
    _table(runtime, args.table)
    try:
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

    runtime = _runtime()
    _table(runtime, args.table)
    try:
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
    print(f"{verb} versions {result.applied} as appId {result.app_id}; already applied {result.already_applied}")
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
    p = sub.add_parser("promote", help="make another location of a table its writable primary")
    p.add_argument("--table", required=True)
    p.add_argument("--to", required=True, help="the location to promote")
    p.add_argument("--force", action="store_true", help="the primary does not answer: flip at LOCATION's head")
    p.add_argument("--timeout", type=float, default=300.0, help="planned: seconds to wait for LOCATION to catch up")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rejoin", help="make a former primary a replica again, quarantining its outage commits")
    p.add_argument("--table", required=True)
    p.add_argument("--location", required=True)
    p.add_argument("--dry-run", action="store_true", help="say what would be quarantined; change nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rejoin)

    p = sub.add_parser("quarantine", help="list quarantined commits, or replay their blind appends")
    p.add_argument("action", choices=["list", "replay"])
    p.add_argument("--table", required=True)
    p.add_argument("--epoch", type=int, help="replay: the quarantine's epoch")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quarantine)

    p = sub.add_parser("topology", help="restore a missing ReplicationTopology from the promotion markers")
    p.add_argument("action", choices=["restore"])
    p.add_argument("--table", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_topology)
