"""delta-replication operator CLI.

    python -m cli [--settings local.settings.json] <command> [options]

Commands: status, sync, verify, events, relay, cost, endpoint, dev, consolidate, promote, rejoin,
quarantine, topology, drill. Each has --help.
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

    runtime = ReplicationRuntime(load_config())
    name_endpoints(runtime)
    return runtime


def name_endpoints(runtime) -> None:
    """Tell the deadline which setting each endpoint belongs to, so messages name both."""
    from cli.deadline import name_endpoint
    from shared.config.settings import resolve_host_storage, resolve_status_connection
    from shared.errors import ConfigError

    for name, settings in runtime.settings.items():
        name_endpoint(settings.blob_service_url, name)
    try:
        host = resolve_host_storage()
        name_endpoint(host.blob_service_url, host.name)
        status = resolve_status_connection()
    except ConfigError:
        return
    if status.endpoint:
        name_endpoint(status.endpoint, status.name)
    elif status.connection_string:
        parts = dict(p.split("=", 1) for p in status.connection_string.split(";") if "=" in p)
        table = parts.get("TableEndpoint") or (f"https://{parts.get('AccountName')}.table.core.windows.net"
                                               if parts.get("AccountName") else None)
        if table:
            name_endpoint(table, status.name)


def _tables(runtime, name: str | None):
    if name is None:
        for group in runtime.config.groups:  # a CLI process knows no group table before a sweep
            runtime.groups.sweep(group.name)
        return runtime.tables()
    try:
        return [runtime.table(name)]
    except KeyError:
        raise SystemExit(f"error: table {name!r} is not configured (configured: {runtime.table_names()})") from None


def cmd_sync(args) -> int:
    from tqdm import tqdm

    from shared.cost.transfer import record_replicated_bytes
    from shared.maintenance.retention import purge_after_vacuum
    from shared.app.commit_event import _status_or_none

    from cli.status import no_log_detail, require_topology
    from shared.delta.head import find_source_head
    from shared.delta.source_log import SourceLog

    runtime = _runtime()
    failed = False
    for table in _tables(runtime, args.table):
        topology = require_topology(runtime, table, "sync")
        primary = runtime.replicator(table.name, topology)
        if find_source_head(SourceLog(table, primary.source_store, primary.root)) is None:
            # Nothing to copy is not "up to date": a typo in the path looks exactly like this.
            print(f"{table.name}: error: {no_log_detail(table.location(topology.primary))}")
            failed = True
            continue
        bar = tqdm(desc=f"{table.name}", unit=" files", disable=args.quiet, dynamic_ncols=True)
        totals = {"bytes": 0}

        def progress(replica, files, nbytes, bar=bar):
            totals["bytes"] += nbytes
            bar.update(files)
            bar.set_postfix_str(f"{totals['bytes'] / 1e6:.1f} MB", refresh=False)

        replicator = runtime.replicator(table.name, topology)  # from the topology's current primary
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
    from tqdm import tqdm

    from cli.status import require_topology
    from cli.verify import verify_replica
    from shared.storage.locations import deltalake_options, deltalake_uri

    runtime = _runtime()
    problems = []
    try:
        for table in _tables(runtime, args.table):
            # Compared with the topology's primary (after a failover, not the configured source), through
            # the app's own deltalake helpers (key, SAS and identity connections alike).
            topology = require_topology(runtime, table, "verify")
            replicator = runtime.replicator(table.name, topology)
            primary = table.location(topology.primary)

            def options(replica_name, table=table, primary=primary):
                replica = table.location(replica_name)
                return (deltalake_uri(replica), deltalake_uri(primary),
                        _bounded(deltalake_options(runtime.settings[replica.connection])),
                        _bounded(deltalake_options(runtime.settings[primary.connection])))

            for name in replicator.replicas:
                bar = tqdm(desc=f"verify {table.name}/{name}", unit=" commits", disable=args.quiet,
                           dynamic_ncols=True)
                found = verify_replica(replicator, name, version=args.version,
                                       deltalake_options=None if args.no_read else options,
                                       progress=lambda n, bar=bar: bar.update(n))
                bar.close()
                problems += found
                print(f"{table.name}/{name}: {'OK' if not found else f'{len(found)} mismatch(es)'}", flush=True)
    finally:
        runtime.close()
    for p in problems:
        print(f"MISMATCH {p}")
    return 1 if problems else 0


def _bounded(options: dict) -> dict:
    """deltalake (Rust) does not go through the CLI's request caps: give it the same bounds."""
    return {**options, "timeout": "30s", "connect_timeout": "5s"}


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

    from devtools.relay import LogRelay

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

    from cli.deadline import set_deadline
    from cli.outcome import error_line
    from cli.status import require_topology

    if not args.once:
        logging.getLogger("devtools.relay").setLevel(logging.WARNING)  # a dev terminal shows why a poll skipped

    relay = LogRelay(runtime, args.state, deliver, topology=lambda table: require_topology(runtime, table, "relay"))
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while True:
            if not args.once:
                set_deadline(args.timeout)  # each poll is bounded; with --once main() bounds the command
            try:
                relay.poll()
                if args.once and relay.problems:
                    raise relay.problems[0]
            except Exception as err:  # noqa: BLE001 - keep relaying; the event is retried next poll
                if args.once:
                    raise
                print(f"relay: {error_line(err)[1]} (retried next poll)", file=sys.stderr, flush=True)
            if args.once or (deadline and time.monotonic() > deadline):
                break
            time.sleep(args.interval)
    finally:
        runtime.close()
    return 0


# Default --timeout per command, in seconds: the bound an operator waits at most. Long copies
# (sync, verify, rejoin, consolidate) get long bounds; per-request caps (cli/deadline.py) still make a
# region that does not answer fail in about a minute and a half.
TIMEOUTS = {"status": 60, "sync": 1800, "verify": 1800, "events": 30, "relay": 60, "cost": 300, "endpoint": 30,
            "dev": 120, "consolidate": 1800, "promote": 300, "rejoin": 1800, "quarantine": 600,
            "topology": 120, "drill": 600}
_TIMEOUT_HELP = {
    "relay": "seconds each poll may take before it is abandoned and retried (default {d:g})",
    "dev": "seconds to wait for Azurite to listen at startup (default {d:g})",
    "status": "seconds before status gives up (each refresh with --watch), naming the endpoint it waited on "
              "(default {d:g})",
}


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _bound_every_command(sub) -> None:
    """--timeout and the exit codes on every command's --help."""
    from cli.outcome import EXIT_CODES

    for name, p in sub.choices.items():
        if not any("--timeout" in a.option_strings for a in p._actions):
            text = _TIMEOUT_HELP.get(name, "seconds before the command gives up, naming the endpoint it waited on "
                                           "(default {d:g})")
            p.add_argument("--timeout", type=_seconds, default=TIMEOUTS[name], metavar="SECONDS",
                           help=text.format(d=TIMEOUTS[name]))
        p.epilog = EXIT_CODES
        p.formatter_class = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    from cli.outcome import EXIT_CODES
    from cli.status import cmd_status

    parser = argparse.ArgumentParser(prog="python -m cli", description="Operate Delta Lake cross-region replication.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", metavar="FILE",
                        help="a Functions local.settings.json whose Values supply the settings")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO (to stderr)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("status", help="per table and replica: versions, lag, state and the reason")
    p.add_argument("--table", help="only this table")
    p.add_argument("--group", help="every table of this group, and the group's recovery point per location")
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("events", help="print the Event Grid subscription filters the configuration needs (JSON)")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("relay", help="local runs: turn new _delta_log blobs of each primary into Event Grid events")
    p.add_argument("--state", default=".relay-state.json", help="where the relay remembers its position")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default 1)")
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
    from cli import drill

    drill.add_parser(sub)
    _bound_every_command(sub)
    return parser


def _bound_seconds(args) -> float | None:
    """The command's total deadline; None for those that run until stopped (they bound each step)."""
    if args.command == "dev" or (args.command == "relay" and not args.once) or getattr(args, "watch", False):
        return None
    return args.timeout


class _NoTraceback(logging.Formatter):
    """Log lines without exception tracebacks: an operator gets one line per event."""

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return ""

    def formatStack(self, stack_info) -> str:  # noqa: N802 - logging's name
        return ""

    def format(self, record) -> str:
        return " ".join(super().format(record).split())


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_NoTraceback("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Without -v only errors are logged: each command reports its own outcome, in one line when it fails.
    root.setLevel(logging.INFO if verbose else logging.ERROR)
    logging.getLogger("azure").setLevel(logging.WARNING if verbose else logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Never raises: failures are one line on stderr and an exit code (cli/outcome.py)."""
    from cli.deadline import deactivate, run_bounded, set_deadline
    from cli.outcome import error_line

    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        _load_settings(args.settings)
        seconds = _bound_seconds(args)
        if seconds is None:
            set_deadline(None)
            return args.func(args)
        return run_bounded(args.command, seconds, lambda: args.func(args))
    except BaseException as err:  # noqa: BLE001 - the one place every failure becomes a line and a code
        code, line = error_line(err)
        sys.stdout.flush()
        if line:
            print(line, file=sys.stderr, flush=True)
        return code
    finally:
        deactivate()


if __name__ == "__main__":
    from cli.deadline import abandoned_workers

    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if abandoned_workers():
        os._exit(exit_code)  # a timed-out command's worker may still wait on a socket: do not join it
    sys.exit(exit_code)
