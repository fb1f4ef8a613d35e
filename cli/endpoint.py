"""python -m cli endpoint: where a reader in a region should read a table from (the read resolver)."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("endpoint", help="the nearest location that qualifies for a read (URI, version, staleness)")
    p.add_argument("--table", help="the table (required unless --group)")
    p.add_argument("--group", help="a group: with --consistent, every table of it at one location's recovery point")
    p.add_argument("--consistent", action="store_true",
                   help="with --group: one location for the whole group, each table at its recovery point")
    p.add_argument("--region", help="the reader's Azure region")
    p.add_argument("--max-staleness", help="the most seconds the data may lag the primary")
    p.add_argument("--min-version", help="skip locations older than this version (read-your-writes)")
    p.add_argument("--timestamp", help="time travel: the version committed at or before this ISO 8601 time")
    p.add_argument("--purpose", default="read",
                   help="read (default) or write: the primary from the topology (refuses when it cannot be read)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_endpoint)


def cmd_endpoint(args) -> int:
    """Exit 0 with the location; 1 when none qualifies (each listed with its reason); 2 on bad input;
    3 when the topology cannot be read (always for --purpose write; for reads when none was ever read)."""
    from cli.__main__ import name_endpoints
    from cli.status import require_topology
    from shared.config.settings import load_config
    from shared.errors import NoReadableLocation, TopologyUnavailable
    from shared.reads.query import parse_read_query
    from shared.reads.resolver import resolve_location
    from shared.runtime import ReplicationRuntime

    if args.group is not None or args.consistent:
        return _group_endpoint(args)
    if args.table is None:
        raise SystemExit("error: --table is required (or --group G --consistent for a whole group)")
    params = {"region": args.region, "max_staleness_seconds": args.max_staleness, "min_version": args.min_version,
              "timestamp": args.timestamp, "purpose": args.purpose}
    try:
        query = parse_read_query({k: v for k, v in params.items() if v is not None})
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    runtime = ReplicationRuntime(load_config())
    try:
        table = runtime.table(args.table)
    except KeyError:
        runtime.close()
        raise SystemExit(f"error: table {args.table!r} is not configured (configured: "
                         f"{runtime.table_names()})") from None
    name_endpoints(runtime)
    try:
        if args.purpose == "write":
            # Never from configuration alone: after a promotion the configured source is fenced.
            require_topology(runtime, table, "endpoint --purpose write")
        found = resolve_location(runtime, table, **query.resolver_arguments())
    except NoReadableLocation as err:
        if args.json:
            print(json.dumps({"error": str(err), "table": table.name, "tried": [t.as_json() for t in err.tried]},
                             indent=2))
        else:
            print(f"no location of {table.name} qualifies:")
            for t in err.tried:
                print(f"  {t.location:<12} {t.reason.value:<20} {t.detail}")
        return 1
    except TopologyUnavailable as err:
        if not args.json:
            raise  # one line on stderr, exit 3 (cli/outcome.py)
        print(json.dumps({"error": str(err), "table": table.name, "tried": []}, indent=2))
        return 3
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(found.as_json(), indent=2))
    else:
        staleness = "unknown" if found.staleness_seconds is None else f"{found.staleness_seconds:.1f}s"
        print(f"{found.table}: {found.location} ({found.region or '-'}) version {found.version}, "
              f"staleness {staleness} ({found.staleness_basis.value})")
        print(f"  uri: {found.uri}")
        if not found.primary_reachable:
            print("  the primary is unreachable")
        if found.topology_stale:
            print(f"  topology stale: {found.topology_stale_reason}")
        for t in found.tried:
            print(f"  skipped {t.location}: {t.reason.value} ({t.detail})")
    return 0


def _group_endpoint(args) -> int:
    """endpoint --group G --consistent: exit 0 with the location and each table's version; 1 when no
    location can serve the group; 2 on bad input."""
    from cli.__main__ import name_endpoints
    from shared.config.settings import load_config
    from shared.errors import NoReadableLocation
    from shared.reads.group import resolve_group
    from shared.runtime import ReplicationRuntime

    other = [flag for flag, value in (("--table", args.table), ("--max-staleness", args.max_staleness),
                                      ("--min-version", args.min_version), ("--timestamp", args.timestamp))
             if value is not None]
    if args.group is None or not args.consistent or other or args.purpose != "read":
        raise SystemExit("error: a group read is `endpoint --group G --consistent [--region R] [--json]`"
                         + (f"; {', '.join(other)} does not apply to it" if other else ""))
    runtime = ReplicationRuntime(load_config())
    name_endpoints(runtime)
    try:
        found = resolve_group(runtime, args.group, region=args.region)
    except KeyError:
        raise SystemExit(f"error: group {args.group!r} is not configured (configured: "
                         f"{', '.join(g.name for g in runtime.config.groups) or 'none'})") from None
    except NoReadableLocation as err:
        if args.json:
            print(json.dumps({"error": str(err), "group": args.group, "tried": [t.as_json() for t in err.tried]},
                             indent=2))
        else:
            print(f"no location can serve group {args.group}: {err}")
        return 1
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(found.as_json(), indent=2))
    else:
        print(f"group {found.group}: {found.location} at {found.as_json()['recoveryPoint']}")
        for t in found.tables:
            print(f"  {t.table:<32} version {t.version if t.version is not None else '-':<8} {t.uri}"
                  + (f"  ({t.reason})" if t.reason else ""))
    return 0
