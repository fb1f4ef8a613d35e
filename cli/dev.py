"""`python -m cli dev`: the local development environment (devtools/dev.py does the work)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    """Add the `dev` command to the CLI's subparsers."""
    p = sub.add_parser(
        "dev", help="local development: Azurite with every configured account, settings, relay (Ctrl-C stops)",
        description="Start Azurite (blob, queue, table) with every account the configuration names, write "
                    "local.settings.json, create the containers, run the relay, and print how to write to the "
                    "tables. Keys, data and the relay position are kept in --state-dir across restarts.")
    p.add_argument("--state-dir", type=Path, default=Path(".dev"),
                   help="keys, Azurite data, relay position and the lock (default .dev, untracked)")
    p.add_argument("--settings-file", type=Path, default=Path("local.settings.json"),
                   help="the Functions settings file to write (default local.settings.json)")
    for service, port in (("blob", 10000), ("queue", 10001), ("table", 10002)):
        p.add_argument(f"--{service}-port", type=_port, metavar="PORT",
                       help=f"Azurite {service} port (default: the last run's, else {port}; a free one if taken)")
    p.add_argument("--functions-url", default="http://localhost:7071",
                   help="where `func start` listens (the relay POSTs there when it answers)")
    p.add_argument("--relay-interval", type=float, default=0.5, help="seconds between relay polls (default 0.5)")
    p.set_defaults(func=cmd_dev)


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (1-65535)")
    return port


def cmd_dev(args) -> int:
    from devtools.dev import DevOptions, run

    return run(DevOptions(
        state_dir=args.state_dir, settings_file=args.settings_file,
        ports={"blob": args.blob_port, "queue": args.queue_port, "table": args.table_port},
        functions_url=args.functions_url.rstrip("/"), relay_interval=args.relay_interval,
        startup_timeout=args.timeout))
