"""The monthly model: storage at each region's price, transfer at the per-GB price; measured or planned.

Measured: a location's bytes (live, history, snapshots) x its region's price per GB-month,
plus the bytes replication copied into it over the last 30 days x the transfer price
(transfer is shown on the receiving replica's region: it is what that replica adds; zero
when source and replica are in the same region). Planned: the same model for a table of
`size_gb` in every region, and `daily_change_gb` replicated from the first region to each
of the others every day.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.cost.prices import GB, UNKNOWN_REGION, PriceTable
from shared.cost.usage import LocationUsage

TRANSFER_WINDOW_DAYS = 30
DAYS_PER_MONTH = 30
COMPONENTS = ("live", "history", "snapshots", "transfer")


@dataclass(frozen=True)
class Monthly:
    """Money per month, by component."""

    live: float = 0.0
    history: float = 0.0
    snapshots: float = 0.0
    transfer: float = 0.0

    @property
    def storage(self) -> float:
        return self.live + self.history + self.snapshots

    @property
    def total(self) -> float:
        return self.storage + self.transfer

    def __add__(self, other: "Monthly") -> "Monthly":
        return Monthly(*(getattr(self, c) + getattr(other, c) for c in COMPONENTS))

    def as_json(self) -> dict:
        return {"live": self.live, "history": self.history, "snapshots": self.snapshots, "storage": self.storage,
                "transfer": self.transfer, "total": self.total}


@dataclass(frozen=True)
class LocationCost:
    table: str
    location: str
    role: str
    region: str | None
    price_region: str
    storage_price: float
    transfer_price: float
    usage: LocationUsage | None
    replicated_bytes: int
    monthly: Monthly

    def as_json(self) -> dict:
        doc = {"table": self.table, "location": self.location, "role": self.role, "region": self.region,
               "priceRegion": self.price_region, "storagePricePerGbMonth": self.storage_price,
               "transferPricePerGb": self.transfer_price, "replicatedBytes30d": self.replicated_bytes,
               "monthly": self.monthly.as_json()}
        if self.usage is not None:
            u = self.usage
            doc["version"] = u.version
            doc["bytes"] = {"live": u.live_bytes, "history": u.history_bytes, "snapshots": u.snapshot_bytes,
                            "table": u.table_bytes}
            doc["files"] = {"table": u.table_files, "snapshots": u.snapshot_files}
        return doc


@dataclass(frozen=True)
class CostReport:
    """Per location, per region (key: the location's region, `unknown` when unset) and overall."""

    mode: str  # "measured" or "plan"
    prices: PriceTable
    locations: list[LocationCost]
    assumptions: dict = field(default_factory=dict)

    @property
    def regions(self) -> dict[str, Monthly]:
        out: dict[str, Monthly] = {}
        for c in self.locations:
            key = c.region or UNKNOWN_REGION
            out[key] = out.get(key, Monthly()) + c.monthly
        return out

    @property
    def total(self) -> Monthly:
        total = Monthly()
        for m in self.regions.values():
            total = total + m
        return total

    def as_json(self) -> dict:
        return {
            "mode": self.mode, "currency": self.prices.currency, "prices": self.prices.as_json(),
            "transferWindowDays": TRANSFER_WINDOW_DAYS, **({"assumptions": self.assumptions} if self.assumptions else {}),
            "locations": [c.as_json() for c in self.locations],
            "regions": [{"region": r, "monthly": m.as_json()} for r, m in self.regions.items()],
            "total": {"monthly": self.total.as_json()},
        }


def measured_costs(usages: Iterable[LocationUsage], replicated: dict[tuple[str, str], int],
                   prices: PriceTable, *, source_regions: dict[str, str | None]) -> CostReport:
    """The monthly model over measured usage.

    Args:
        usages: one per table location.
        replicated: (table, replica) -> bytes replication copied into it in the last 30 days.
        source_regions: table -> the source location's region (for same-region transfer).
    """
    costs = []
    for u in usages:
        price = prices.storage_price(u.region)
        per_gb = price / GB
        transfer_price = 0.0 if u.role == "source" else prices.transfer_price(source_regions.get(u.table), u.region)
        moved = replicated.get((u.table, u.location), 0) if u.role == "replica" else 0
        monthly = Monthly(live=u.live_bytes * per_gb, history=u.history_bytes * per_gb,
                          snapshots=u.snapshot_bytes * per_gb, transfer=moved / GB * transfer_price)
        costs.append(LocationCost(u.table, u.location, u.role, u.region, prices.price_region(u.region), price,
                                  transfer_price, u, moved, monthly))
    return CostReport("measured", prices, costs)


def planned_costs(size_gb: float, regions: list[str], prices: PriceTable, *, daily_change_gb: float = 0.0) -> CostReport:
    """The model before anything exists: `size_gb` in each region; the first region is the primary.

    Example:
        1024 GB in eastus, westeu, seasia at the default prices: 18.84 + 20.48 + 23.55 = 62.87 per
        month of storage, plus 30 x daily_change_gb x the transfer price for each replica.

    Raises:
        ValueError: no regions, a repeated region, or a negative size.
    """
    if not regions:
        raise ValueError("name at least one region (the first is the primary)")
    if len(set(regions)) != len(regions):
        raise ValueError(f"each region once, please (got {', '.join(regions)})")
    if size_gb < 0 or daily_change_gb < 0:
        raise ValueError("sizes are never negative")
    costs = []
    for i, region in enumerate(regions):
        role = "source" if i == 0 else "replica"
        price = prices.storage_price(region)
        transfer_price = 0.0 if i == 0 else prices.transfer_price(regions[0], region)
        moved_gb = 0.0 if i == 0 else daily_change_gb * DAYS_PER_MONTH
        costs.append(LocationCost("(plan)", region, role, region, prices.price_region(region), price, transfer_price,
                                  None, int(moved_gb * GB), Monthly(live=size_gb * price, transfer=moved_gb * transfer_price)))
    return CostReport("plan", prices, costs,
                      assumptions={"sizeGb": size_gb, "regions": regions, "dailyChangeGb": daily_change_gb,
                                   "daysPerMonth": DAYS_PER_MONTH, "primary": regions[0]})
