"""delta-replication operator CLI.

    python -m cli [--settings local.settings.json] <command> [options]

Commands: status, sync, verify, events, relay, cost, endpoint, dev, consolidate, promote, rejoin,
quarantine. Each has --help.
Settings come from the environment (REPLICATION_CONFIG or REPLICATION_CONFIG_FILE and the
connection settings), or from the Values of a Functions local.settings.json via --settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import datetime, timezone


def _load_settings(path: str | None) -> None:
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as fh:
            values = json.load(fh).get("Values", {})
    except OSError as err:
        raise SystemExit(f"error: --settings {path}: cannot read it ({err.strerror}); "
                         "run `bash scripts/dev.sh` to write one, or copy local.settings.json.example") from None
    except (ValueError, AttributeError):
        raise SystemExit(f"error: --settings {path}: not a Functions local.settings.json "
                         '(expected a JSON object with "Values")') from None
    for key, value in values.items():
        if not key.startswith("//") and isinstance(value, str):
            os.environ.setdefault(key, value)


def _runtime():
    from shared.config.settings import load_config
    from shared.runtime import ReplicationRuntime

    return ReplicationRuntime(load_config())


def _tables(runtime, name: str | None):
    tables = list(runtime.config.tables)
    if name is not None:
        tables = [t for t in tables if t.name == name]
        if not tables:
            raise SystemExit(f"error: table {name!r} is not configured (configured: "
                             f"{', '.join(t.name for t in runtime.config.tables)})")
    return tables


def cmd_status(args) -> int:
    from shared.health.lag import measure_table

    if getattr(args, "watch", False):
        from cli.watch import watch

        return watch(args, lambda a: cmd_status(argparse.Namespace(**{**vars(a), "watch": False})))
    runtime = _runtime()
    rows = []
    for table in _tables(runtime, args.table):
        for lag in measure_table(runtime.replicator(table.name)):
            rows.append({"table": lag.table, "replica": lag.replica, "sourceVersion": lag.source_version,
                         "replicaVersion": lag.replica_version, "versionLag": lag.version_lag,
                         "lagSeconds": lag.lag_seconds, "state": lag.status.value, "detail": lag.detail})
    from cli.consolidate import print_status, status_rows

    consolidations = status_rows(runtime)
    runtime.close()
    if args.json:
        print(json.dumps({"checkedAt": datetime.now(timezone.utc).isoformat(), "replicas": rows,
                          "consolidations": consolidations}, indent=2))
    else:
        header = f"{'TABLE':<16} {'REPLICA':<12} {'SOURCE':>7} {'REPLICA':>7} {'LAG':>5} {'TIME LAG':>9}  STATE"
        print(header)
        for r in rows:
            print(f"{r['table']:<16} {r['replica']:<12} {str(r['sourceVersion']):>7} {str(r['replicaVersion']):>7} "
                  f"{r['versionLag']:>5} {r['lagSeconds']:>8.1f}s  {r['state']}")
        print_status(consolidations)
    return 0 if all(r["state"] in ("healthy", "lagging") for r in rows) else 1


def cmd_sync(args) -> int:
    from tqdm import tqdm

    from shared.cost.transfer import record_replicated_bytes
    from shared.maintenance.retention import purge_after_vacuum
    from shared.replication.commit_events import _status_or_none

    runtime = _runtime()
    failed = False
    for table in _tables(runtime, args.table):
        bar = tqdm(desc=f"{table.name}", unit=" files", disable=args.quiet, dynamic_ncols=True)
        totals = {"bytes": 0}

        def progress(replica, files, nbytes, bar=bar):
            totals["bytes"] += nbytes
            bar.update(files)
            bar.set_postfix_str(f"{totals['bytes'] / 1e6:.1f} MB", refresh=False)

        replicator = runtime.replicator(table.name)  # follows the topology: from the current primary
        outcomes = replicator.replicate(None, progress=progress)
        record_replicated_bytes(runtime, table.name, outcomes)
        if any(o.vacuum_versions for o in outcomes):
            # The same purge a VACUUM END event triggers: the primary's purge reaches every region.
            purge_after_vacuum(replicator, outcomes, status=_status_or_none(runtime))
        bar.close()
        for o in outcomes:
            line = f"{table.name}/{o.replica}: {o.state.value} v{o.head_before} -> v{o.head_after}, " \
                   f"{o.files} files, {o.bytes / 1e6:.1f} MB in {o.seconds:.1f}s"
            if o.error is not None:
                line += f" - {o.error}"
                failed = True
            print(line)
    runtime.close()
    return 1 if failed else 0


def cmd_verify(args) -> int:
    from cli.verify import verify_replica
    from shared.reads.locations import deltalake_options, deltalake_uri

    runtime = _runtime()
    problems = []
    for table in _tables(runtime, args.table):
        # Compared with the topology's primary (after a failover, not the configured source), through
        # the app's own deltalake helpers (key, SAS and identity connections alike).
        primary = table.location(runtime.topology(table.name).primary)
        replicator = runtime.replicator(table.name)

        def options(replica_name, table=table, primary=primary):
            replica = table.location(replica_name)
            return (deltalake_uri(replica), deltalake_uri(primary),
                    deltalake_options(runtime.settings[replica.connection]),
                    deltalake_options(runtime.settings[primary.connection]))

        for name in replicator.replicas:
            found = verify_replica(replicator, name, version=args.version,
                                   deltalake_options=None if args.no_read else options)
            problems += found
            print(f"{table.name}/{name}: {'OK' if not found else f'{len(found)} mismatch(es)'}")
    runtime.close()
    for p in problems:
        print(f"MISMATCH {p}")
    return 1 if problems else 0


def cmd_events(args) -> int:
    from cli.subscriptions import subscription_filters
    from shared.config.settings import load_config, resolve_connection

    config = load_config()
    accounts = {}
    for name in config.connection_names():
        try:
            accounts[name] = resolve_connection(name).account_name
        except Exception:  # noqa: BLE001 - the filters do not need the account to be reachable
            accounts[name] = ""
    print(json.dumps(subscription_filters(config, accounts), indent=2))
    return 0


def cmd_relay(args) -> int:
    import requests

    from shared.replication.relay import LogRelay

    runtime = _runtime()
    in_process = None

    def deliver(event: dict) -> None:
        nonlocal in_process
        if not args.in_process:
            try:
                response = requests.post(args.host_url, json=[event], timeout=120,
                                         headers={"aeg-event-type": "Notification"})
                if response.status_code >= 300:
                    raise RuntimeError(f"the Functions host answered HTTP {response.status_code}")
                return
            except requests.ConnectionError:
                pass  # no host running: deliver to the function object itself
        if in_process is None:
            from functions.replicate_commit import replicate_commit

            in_process = replicate_commit
        import azure.functions as func

        in_process(func.EventGridEvent(id=event["id"], data=event["data"], topic=event["topic"],
                                       subject=event["subject"], event_type=event["eventType"],
                                       event_time=datetime.now(timezone.utc), data_version=""))
        print(f"delivered {event['subject'].split('/blobs/', 1)[1]}", flush=True)

    relay = LogRelay(runtime, args.state, deliver)
    deadline = time.monotonic() + args.duration if args.duration else None
    while True:
        try:
            relay.poll()
        except Exception as err:  # noqa: BLE001 - keep relaying; the event is retried next poll
            logging.getLogger("relay").warning("relay.delivery_failed error=%s", err)
        if args.once or (deadline and time.monotonic() > deadline):
            break
        time.sleep(args.interval)
    runtime.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cli", description="Operate Delta Lake cross-region replication.")
    parser.add_argument("--settings", help="a Functions local.settings.json whose Values supply the settings")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("status", help="per table and replica: versions, lag and state")
    p.add_argument("--table", help="only this table")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C (a terminal beside the writer)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --watch (default 2)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("sync", help="bring replicas to the primary's head now")
    p.add_argument("--table", help="only this table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("verify", help="deep check: commits byte-identical, files equal (size, MD5), rows equal")
    p.add_argument("--table", help="only this table")
    p.add_argument("--version", type=int, help="only this version")
    p.add_argument("--no-read", action="store_true", help="skip the deltalake row-count comparison")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("events", help="print the Event Grid subscription filters the configuration needs (JSON)")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("relay", help="local runs: turn new _delta_log blobs into Event Grid events")
    p.add_argument("--state", default=".relay-state.json", help="where the relay remembers its position")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    p.add_argument("--host-url", default="http://localhost:7071/runtime/webhooks/EventGrid?functionName=replicate_commit",
                   help="the Functions host's Event Grid webhook")
    p.add_argument("--in-process", action="store_true", help="call replicate_commit directly, never the host")
    p.add_argument("--once", action="store_true", help="one poll, then exit")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.set_defaults(func=cmd_relay)

    from cli.cost import add_parser as add_cost_parser

    add_cost_parser(sub)
    from cli import endpoint

    endpoint.add_parser(sub)
    from cli import dev

    dev.register(sub)
    from cli import consolidate

    consolidate.add_parser(sub)
    from cli import failover

    failover.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    _load_settings(args.settings)
    from shared.errors import ConfigError

    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
