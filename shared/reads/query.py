"""A read request as text (HTTP query, CLI flags) -> validated resolver arguments."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from shared.reads.resolver import Purpose
from shared.reads.timestamps import parse_timestamp

QUERY_KEYS = ("region", "max_staleness_seconds", "min_version", "version", "timestamp", "purpose")


@dataclass(frozen=True)
class ReadQuery:
    region: str | None = None
    purpose: Purpose = Purpose.READ
    max_staleness_seconds: float | None = None
    min_version: int | None = None
    version: int | None = None
    timestamp: datetime | None = None

    def resolver_arguments(self) -> dict:
        return {"region": self.region, "purpose": self.purpose, "max_staleness_seconds": self.max_staleness_seconds,
                "min_version": self.min_version, "version": self.version, "timestamp": self.timestamp}


def parse_read_query(params: Mapping[str, str]) -> ReadQuery:
    """Validate query parameters (all optional): every problem in one ValueError.

    Raises:
        ValueError: an unknown parameter or a malformed value; the message says what to send.
    """
    problems = [f"unknown parameter {k!r} (expected {', '.join(QUERY_KEYS)})" for k in params if k not in QUERY_KEYS]
    values: dict = {}
    region = (params.get("region") or "").strip()
    values["region"] = region or None
    purpose = (params.get("purpose") or "read").strip().lower()
    try:
        values["purpose"] = Purpose(purpose)
    except ValueError:
        problems.append(f"purpose must be read or write, got {purpose!r}")
    raw = params.get("max_staleness_seconds")
    if raw not in (None, ""):
        try:
            values["max_staleness_seconds"] = float(raw)
            if not values["max_staleness_seconds"] >= 0 or values["max_staleness_seconds"] == float("inf"):
                raise ValueError
        except ValueError:
            problems.append(f"max_staleness_seconds must be a number of seconds >= 0, got {raw!r}")
    for key in ("min_version", "version"):
        raw = params.get(key)
        if raw not in (None, ""):
            if not raw.strip().isdigit():
                problems.append(f"{key} must be a whole number >= 0, got {raw!r}")
            else:
                values[key] = int(raw)
    raw = params.get("timestamp")
    if raw not in (None, ""):
        try:
            values["timestamp"] = parse_timestamp(raw)
        except ValueError as err:
            problems.append(str(err))
    if values.get("version") is not None and values.get("timestamp") is not None:
        problems.append("pass either version or timestamp, not both")
    if problems:
        raise ValueError("; ".join(problems))
    return ReadQuery(**values)
