"""Price files: storage per GB-month per region, inter-region transfer per GB.

The file (JSON; the defaults are `default_prices.json` next to this module):

    {"currency": "USD", "note": "...",
     "storage_per_gb_month": {"<region>": {"price": 0.0184, "taken": "YYYY-MM-DD", "note": "..."}, ...,
                              "unknown": {...}},
     "transfer_per_gb": {"price": 0.02, "taken": "YYYY-MM-DD", "note": "..."},
     "region_aliases": {"westeurope": "westeu", ...}}

`unknown` prices every location whose region is not set or not listed. A GB is 2**30 bytes,
as Azure bills it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from shared.errors import ConfigError

DEFAULT_PRICES = Path(__file__).with_name("default_prices.json")
UNKNOWN_REGION = "unknown"
GB = 1024 ** 3
_REGION_RE = re.compile(r"^[a-z][a-z0-9]*$")
_TOP_KEYS = {"currency", "note", "storage_per_gb_month", "transfer_per_gb", "region_aliases"}


@dataclass(frozen=True)
class Price:
    """One price with its provenance."""

    price: float
    taken: str
    note: str = ""


@dataclass(frozen=True)
class PriceTable:
    """Validated prices. `source` names the file they came from."""

    currency: str
    storage: dict[str, Price]
    transfer: Price
    aliases: dict[str, str] = field(default_factory=dict)
    note: str = ""
    source: str = ""

    def price_region(self, region: str | None) -> str:
        """The storage price key for a region: itself, its alias, or `unknown`."""
        if region:
            key = self.aliases.get(region, region)
            if key in self.storage:
                return key
        return UNKNOWN_REGION

    def storage_price(self, region: str | None) -> float:
        return self.storage[self.price_region(region)].price

    def transfer_price(self, source_region: str | None, replica_region: str | None) -> float:
        """Per GB between two regions; zero when both are known to be the same region."""
        if source_region and replica_region and \
                self.aliases.get(source_region, source_region) == self.aliases.get(replica_region, replica_region):
            return 0.0
        return self.transfer.price

    def as_json(self) -> dict:
        return {
            "source": self.source, "currency": self.currency,
            "storagePerGbMonth": {k: {"price": p.price, "taken": p.taken} for k, p in self.storage.items()},
            "transferPerGb": {"price": self.transfer.price, "taken": self.transfer.taken},
        }


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Read and validate a price file (the committed defaults when `path` is None).

    Raises:
        ConfigError: the file is missing, not JSON, or a field is wrong; the message names the
            file and every bad field, and says what to fix.
    """
    where = Path(path) if path is not None else DEFAULT_PRICES
    try:
        text = where.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"price file {where}: cannot read it ({err.strerror or type(err).__name__}); "
                          f"pass an existing JSON file with --prices, or omit it for the defaults") from err
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"price file {where}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
    return parse_prices(doc, source="defaults (shared/cost/default_prices.json)" if path is None else str(where))


def parse_prices(doc, *, source: str = "<prices>") -> PriceTable:
    """Validate a parsed price document; every problem is reported at once with its field path."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise ConfigError(f"price file {source}: expected a JSON object with storage_per_gb_month and transfer_per_gb")
    for key in sorted(set(doc) - _TOP_KEYS):
        problems.append(f"{key}: unknown field (expected {', '.join(sorted(_TOP_KEYS))})")
    currency = doc.get("currency", "USD")
    if not isinstance(currency, str) or not currency.strip():
        problems.append(f"currency: expected a currency code such as 'USD', got {currency!r}")
        currency = "?"
    storage: dict[str, Price] = {}
    raw = doc.get("storage_per_gb_month")
    if not isinstance(raw, dict) or not raw:
        problems.append("storage_per_gb_month: required, an object of region -> {price, taken, note}")
    else:
        for region, entry in raw.items():
            if not isinstance(region, str) or not _REGION_RE.match(region):
                problems.append(f"storage_per_gb_month.{region}: region names are lowercase letters and digits")
                continue
            price = _price(entry, f"storage_per_gb_month.{region}", problems)
            if price is not None:
                storage[region] = price
        if UNKNOWN_REGION not in raw:
            problems.append(f"storage_per_gb_month.{UNKNOWN_REGION}: required, the price for regions not listed "
                            f"(and locations without a region)")
    transfer = _price(doc.get("transfer_per_gb"), "transfer_per_gb", problems)
    aliases = doc.get("region_aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        problems.append("region_aliases: expected an object of region name -> price region name")
        aliases = {}
    else:
        for name, target in aliases.items():
            if storage and target not in storage:
                problems.append(f"region_aliases.{name}: names {target!r}, which storage_per_gb_month does not price")
    note = doc.get("note", "")
    if problems:
        raise ConfigError(f"price file {source} is invalid; fix these (nothing was measured or written): "
                          + "; ".join(problems))
    return PriceTable(currency=currency.strip(), storage=storage, transfer=transfer, aliases=dict(aliases),
                      note=note if isinstance(note, str) else "", source=source)


def _price(entry, where: str, problems: list[str]) -> Price | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected {{\"price\": <number per GB>, \"taken\": \"YYYY-MM-DD\", \"note\": ...}}, "
                        f"got {type(entry).__name__}")
        return None
    value = entry.get("price")
    ok = True
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
        problems.append(f"{where}.price: expected a non-negative number, got {value!r}")
        ok = False
    taken = entry.get("taken")
    try:
        date.fromisoformat(taken) if isinstance(taken, str) else None
        if not isinstance(taken, str):
            raise ValueError
    except ValueError:
        problems.append(f"{where}.taken: expected the date the price was taken, YYYY-MM-DD, got {taken!r}")
        ok = False
    note = entry.get("note", "")
    if not isinstance(note, str):
        problems.append(f"{where}.note: expected text, got {type(note).__name__}")
        ok = False
    return Price(float(value), taken, note) if ok else None
