"""`python -m cli consolidate`: run consolidations now; and the consolidation section of `status`."""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)


def cmd_consolidate(args) -> int:
    from tqdm import tqdm

    from shared.consolidation.run import run_consolidation
    from shared.errors import ReplicationError

    from cli.__main__ import _runtime

    runtime = _runtime()
    try:
        consolidations = list(runtime.config.consolidations)
        if args.name is not None:
            consolidations = [c for c in consolidations if c.name == args.name]
            if not consolidations:
                configured = ", ".join(c.name for c in runtime.config.consolidations) or "none"
                raise SystemExit(f"error: consolidation {args.name!r} is not configured (configured: {configured})")
        if not consolidations and not args.json:
            print("no consolidations are configured (nothing to do); add \"consolidations\" to the replication "
                  "configuration, see README \"Consolidating regional tables\"")
        results, failed = [], False
        for consolidation in consolidations:
            bar = tqdm(desc=consolidation.name, unit=" rows", disable=args.json or args.quiet, dynamic_ncols=True)

            def progress(source, rows, bar=bar):
                bar.update(rows)
                bar.set_postfix_str(source, refresh=False)

            try:
                outcomes = run_consolidation(runtime, consolidation, runtime.consolidation_status(),
                                             runtime.alert_publisher(), progress=progress)
            except ReplicationError as err:
                bar.close()
                failed = True
                results.append({"consolidation": consolidation.name, "error": str(err)})
                if not args.json:
                    print(f"{consolidation.name}: {err}")
                continue
            bar.close()
            for o in outcomes:
                failed |= o.status in ("unreachable", "error")
                results.append(o.as_json())
                if not args.json:
                    line = (f"{o.consolidation}/{o.source}: {o.status} v{o.start_version} -> v{o.merged_version}, "
                            f"{o.commits_read} commits, {o.rows_inserted} inserted, {o.rows_updated} updated, "
                            f"{o.bytes_read / 1e6:.1f} MB read in {o.seconds:.1f}s")
                    if o.fallback:
                        line += " (source snapshot: its history was gone)"
                    if o.error:
                        line += f" - {o.error}"
                    print(line)
        if args.json:
            print(json.dumps({"sources": results}, indent=2))
        return 1 if failed else 0
    finally:
        runtime.close()


def add_parser(sub) -> None:
    p = sub.add_parser("consolidate", help="merge regional tables into their global tables now (exactly once)")
    p.add_argument("--name", help="only this consolidation")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_consolidate)


def status_rows(runtime) -> list[dict]:
    """The ConsolidationStatus rows of the configured consolidations (empty when none)."""
    if not runtime.config.consolidations:
        return []
    names = {c.name for c in runtime.config.consolidations}
    return [r.as_json() for r in runtime.consolidation_status().list_rows() if r.consolidation in names]


def print_status(rows: list[dict]) -> None:
    if not rows:
        return
    print()
    print(f"{'CONSOLIDATION':<20} {'SOURCE':<12} {'MERGED':>7} {'SOURCE':>7} {'BEHIND':>6} {'ROWS':>7}  STATE")
    for r in rows:
        line = (f"{r['consolidation']:<20} {r['source']:<12} {str(r['lastMergedVersion']):>7} "
                f"{str(r['sourceVersion']):>7} {r['versionsBehind']:>6} {r['rowsMergedLastRun']:>7}  {r['status']}")
        if r["lastError"]:
            line += f" ({r['lastError'][:80]})"
        print(line)
