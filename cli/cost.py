"""`python -m cli cost`: what the regions cost, measured from listings or planned before anything exists."""

from __future__ import annotations

import json
import re
import sys

from shared.cost.estimate import (
    COMPONENTS,
    TRANSFER_WINDOW_DAYS,
    CostReport,
    measured_costs,
    planned_costs,
)
from shared.cost.prices import load_prices

_REGION_RE = re.compile(r"^[a-z][a-z0-9]*$")
_LABELS = {"live": "storage (live)", "history": "history", "snapshots": "snapshots", "transfer": "transfer"}
_COLORS = {"live": "#4c72b0", "history": "#8fa8d0", "snapshots": "#55a868", "transfer": "#dd8452"}


def add_parser(sub) -> None:
    p = sub.add_parser("cost", help="monthly storage and transfer cost per location, region and table",
                       description="Measured: bytes per location from listings (live, history, snapshots) and "
                                   "bytes replicated in the last 30 days, priced per region. With --plan: the same "
                                   "model for a table that does not exist yet.")
    p.add_argument("--table", help="only this table")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--png", metavar="FILE", help="also draw a stacked bar chart per region to FILE")
    p.add_argument("--prices", metavar="FILE", help="a price file (JSON, see shared/cost/default_prices.json); "
                                                    "default: list prices, supply your contract prices")
    p.add_argument("--plan", action="store_true", help="planning mode: no table is read")
    p.add_argument("--size-gb", type=float, help="with --plan: the table's size in GB (2**30 bytes)")
    p.add_argument("--regions", help="with --plan: comma-separated regions, the primary first (eastus,westeu,seasia)")
    p.add_argument("--daily-change-gb", type=float, default=0.0,
                   help="with --plan: GB replicated to each replica per day (default 0)")
    p.set_defaults(func=cmd_cost)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_cost(args) -> int:
    # Every argument and the price file are checked before anything is read or written.
    if args.plan:
        if args.table:
            return _fail("--table has no meaning with --plan (no table is read); drop one of them")
        if args.size_gb is None or args.regions is None:
            return _fail("--plan needs --size-gb and --regions, e.g. --plan --size-gb 1024 --regions eastus,westeu")
        if not args.size_gb >= 0 or not args.daily_change_gb >= 0:
            return _fail("--size-gb and --daily-change-gb are GB figures, zero or more")
        regions = [r.strip() for r in args.regions.split(",")]
        bad = [r for r in regions if not _REGION_RE.match(r)]
        if bad:
            return _fail(f"--regions: {', '.join(repr(b) for b in bad)} is not a region name "
                         f"(lowercase letters and digits, comma-separated, e.g. eastus,westeu)")
        if len(set(regions)) != len(regions):
            return _fail(f"--regions: name each region once (got {args.regions})")
    elif args.size_gb is not None or args.regions is not None or args.daily_change_gb:
        return _fail("--size-gb, --regions and --daily-change-gb are for planning: add --plan")
    prices = load_prices(args.prices)  # ConfigError -> exit 2 with the field paths
    if args.plan:
        report = planned_costs(args.size_gb, regions, prices, daily_change_gb=args.daily_change_gb)
    else:
        report = _measure(args, prices)
        if report is None:
            return 2
    if args.png:
        draw_chart(report, args.png)
    print(json.dumps(report.as_json(), indent=2) if args.json else render_text(report))
    return 0


def _measure(args, prices) -> CostReport | None:
    from cli.__main__ import _runtime, _tables
    from shared.cost.usage import measure_table

    runtime = _runtime()
    try:
        tables = _tables(runtime, args.table)
        transfer = runtime.transfer_store()
        usages, replicated = [], {}
        for table in tables:
            usages += measure_table(runtime, table)
            for day in transfer.list_days(table.name, days=TRANSFER_WINDOW_DAYS):
                key = (table.name, day.replica)
                replicated[key] = replicated.get(key, 0) + day.total_bytes
        return measured_costs(usages, replicated, prices,
                              source_regions={t.name: t.source.region for t in tables})
    finally:
        runtime.close()


def _size(nbytes: int) -> str:
    value, unit = float(nbytes), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{nbytes} B" if unit == "B" else f"{value:.1f} {unit}"


def _money(value: float) -> str:
    return f"{value:.2f}" if value >= 0.01 or value == 0 else f"{value:.2g}"


def _money_format(report: CostReport) -> tuple[int, int]:
    """Decimals and width: cents, unless the whole report is below a cent (small or test tables)."""
    return (2, 10) if report.mode == "plan" or report.total.total >= 0.01 else (8, 11)


def render_text(report: CostReport) -> str:
    cur = report.prices.currency
    lines = []
    if report.mode == "plan":
        a = report.assumptions
        lines.append(f"Plan: {a['sizeGb']:g} GB in {len(a['regions'])} region(s), primary {a['primary']}, "
                     f"{a['dailyChangeGb']:g} GB/day replicated to each replica ({a['daysPerMonth']} days/month)")
        lines.append(f"{'REGION':<12} {'PRICE/GB-MO':>11} {'STORAGE':>10} {'TRANSFER':>10} {'TOTAL':>10}")
        for c in report.locations:
            m = c.monthly
            lines.append(f"{c.location:<12} {c.storage_price:>11.4f} {m.storage:>10.2f} {m.transfer:>10.2f} {m.total:>10.2f}")
        storage = [round(c.monthly.storage, 2) for c in report.locations]
        lines.append(f"storage: {' + '.join(f'{s:.2f}' for s in storage)} = {report.total.storage:.2f} {cur}/month")
    else:
        d, w = _money_format(report)
        lines.append(f"{'TABLE':<14} {'LOCATION':<10} {'REGION':<10} {'LIVE':>10} {'HISTORY':>10} {'SNAPSHOTS':>10} "
                     f"{'COPIED 30D':>10} {'STORAGE':>{w}} {'TRANSFER':>{w}} {'TOTAL':>{w}}  ({cur}/month)")
        for c in report.locations:
            u, m = c.usage, c.monthly
            lines.append(f"{c.table:<14} {c.location:<10} {(c.region or '-'):<10} {_size(u.live_bytes):>10} "
                         f"{_size(u.history_bytes):>10} {_size(u.snapshot_bytes):>10} {_size(c.replicated_bytes):>10} "
                         f"{m.storage:>{w}.{d}f} {m.transfer:>{w}.{d}f} {m.total:>{w}.{d}f}")
    lines.append("")
    d, w = _money_format(report)
    lines.append(f"{'REGION':<12} {'LIVE':>{w}} {'HISTORY':>{w}} {'SNAPSHOTS':>{w}} {'TRANSFER':>{w}} "
                 f"{'TOTAL':>{w}}  ({cur}/month)")
    for region, m in [*report.regions.items(), ("total", report.total)]:
        lines.append(f"{region:<12} {m.live:>{w}.{d}f} {m.history:>{w}.{d}f} {m.snapshots:>{w}.{d}f} "
                     f"{m.transfer:>{w}.{d}f} {m.total:>{w}.{d}f}")
    taken = min(p.taken for p in [*report.prices.storage.values(), report.prices.transfer])
    lines.append(f"prices: {report.prices.source} (taken {taken}); transfer {report.prices.transfer.price:g} "
                 f"{cur}/GB. Defaults are list prices: supply your contract prices with --prices FILE")
    return "\n".join(lines)


def draw_chart(report: CostReport, path: str) -> None:
    """One stacked bar per region: storage (live), history, snapshots, transfer, in currency per month."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = list(report.regions.items())
    names = [r for r, _ in regions]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(names) + 2), 4.5), dpi=110)
    bottoms = [0.0] * len(names)
    for component in COMPONENTS:
        values = [getattr(m, component) for _, m in regions]
        ax.bar(names, values, bottom=bottoms, label=_LABELS[component], color=_COLORS[component], width=0.6)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    for x, total in enumerate(bottoms):
        ax.annotate(_money(total), (x, total), ha="center", va="bottom", fontsize=9,
                    xytext=(0, 3), textcoords="offset points")
    ax.set_ylabel(f"{report.prices.currency} per month")
    title = "Planned monthly cost per region" if report.mode == "plan" else "Monthly cost per region (measured)"
    ax.set_title(f"{title}: total {_money(report.total.total)} {report.prices.currency}")
    ax.set_ylim(0, (max(bottoms) or 1.0) * 1.15)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
