"""python -m cli drill: rehearse failing a group over to one location; change nothing; write evidence."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("drill", help="rehearse a group failover (reads only) and write an evidence report",
                       description="Per table: the target reads at its head, what a forced promote would lose now "
                                   "(versions, rows), how long the target took to answer; the group's recovery "
                                   "point there. Exit 0 when the target is usable, 1 when it is not.")
    p.add_argument("--group", required=True, help="the group to rehearse")
    p.add_argument("--to", required=True, metavar="LOCATION", help="the location a failover would promote")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--report", metavar="FILE.md",
                   help="write the evidence report there (markdown) and beside it FILE.json, for an auditor to file")
    p.set_defaults(func=cmd_drill)


def cmd_drill(args) -> int:
    from cli.__main__ import _runtime
    from shared.app.drill import drill_group

    runtime = _runtime()
    try:
        result = drill_group(runtime, args.group, args.to)
    except KeyError:
        raise SystemExit(f"error: group {args.group!r} is not configured (configured: "
                         f"{', '.join(g.name for g in runtime.config.groups) or 'none'})") from None
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    finally:
        runtime.close()
    doc = result.as_json()
    if args.report:
        report = Path(args.report)
        report.write_text(result.markdown(), encoding="utf-8")
        report.with_suffix(".json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    print(json.dumps(doc, indent=2) if args.json else result.markdown())
    return 0 if result.usable else 1
