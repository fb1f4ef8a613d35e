"""The read resolver: the first location on a reader's preference list that qualifies.

A location qualifies when it is reachable, not diverged, has at least `min_version`, holds
the requested `version` (or the version a `timestamp` resolves to), and is within
`max_staleness_seconds`. Staleness is measured against the primary's head with HEAD
requests; while the primary is unreachable it is bounded by the replica's last caught-up
time from the ReplicationStatus rows, and the resolution says so. Nothing learnt here
outlives the call.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from azure.core.exceptions import AzureError

from shared.config.model import LocationConfig, TableConfig
from shared.delta.compare import same_commit
from shared.errors import NoReadableLocation, ReplicationError, ReplicaUnreachable, TopologyUnavailable
from shared.health.status import StatusStore
from shared.storage.locations import abfss_uri, deltalake_options, deltalake_uri
from shared.reads.probe import LocationProbe, probe_stores
from shared.reads.routing import preference_list
from shared.reads.timestamps import TimestampUnavailable, to_ms, version_at_timestamp
from shared.reads.topology import reader_topology

log = logging.getLogger(__name__)


class Purpose(enum.Enum):
    READ = "read"
    WRITE = "write"


class SkipReason(enum.Enum):
    UNREACHABLE = "unreachable"
    DIVERGED = "diverged"
    EMPTY = "empty"
    BEHIND_MIN_VERSION = "behind_min_version"
    TOO_STALE = "too_stale"
    STALENESS_UNKNOWN = "staleness_unknown"
    VERSION_UNAVAILABLE = "version_unavailable"


class StalenessBasis(enum.Enum):
    PRIMARY = "primary"  # the location is the primary: 0 by definition
    MEASURED = "measured"  # the replica's head against the primary's head, now
    LAST_CAUGHT_UP = "last_caught_up"  # primary unreachable: since the replica was last seen caught up
    UNKNOWN = "unknown"  # primary unreachable and no caught-up record


@dataclass(frozen=True)
class Skipped:
    """A location the resolver passed over, and why."""

    location: str
    reason: SkipReason
    detail: str

    def as_json(self) -> dict:
        return {"location": self.location, "reason": self.reason.value, "detail": self.detail}


@dataclass(frozen=True)
class Resolution:
    """The chosen location. `storage_options` hold credentials: never log or return them."""

    table: str
    location: str
    region: str | None
    uri: str  # abfss:// for Spark
    deltalake_uri: str
    version: int | None
    staleness_seconds: float | None
    staleness_basis: StalenessBasis
    primary_reachable: bool
    tried: tuple[Skipped, ...]
    requests: dict[str, int]
    storage_options: dict[str, str] = field(repr=False, default_factory=dict)
    epoch: int = 0  # the topology's epoch the answer was resolved under
    # Set when the topology could not be read now and the last one this process read was used.
    topology_stale_reason: str | None = None

    @property
    def topology_stale(self) -> bool:
        return self.topology_stale_reason is not None

    def as_json(self) -> dict:
        """The HTTP/CLI answer (no credentials)."""
        return {"table": self.table, "location": self.location, "region": self.region, "uri": self.uri,
                "version": self.version, "staleness_seconds": self.staleness_seconds,
                "staleness_basis": self.staleness_basis.value, "primary_reachable": self.primary_reachable,
                "epoch": self.epoch, "topology_stale": self.topology_stale,
                "topology_stale_reason": self.topology_stale_reason,
                "tried": [t.as_json() for t in self.tried], "requests": dict(self.requests)}


class _Skip(Exception):
    def __init__(self, reason: SkipReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def primary_location(runtime, table: TableConfig) -> LocationConfig:
    """The location that takes writes: the ReplicationTopology row's primary (read now with a short
    timeout, else the last one this process read), or the configured source when no promote has
    happened.

    Raises:
        TopologyUnavailable: the topology cannot be read and this process never read it.
    """
    return table.location(reader_topology(runtime).get(table).topology.primary)


def resolve_location(runtime, table: TableConfig, *, region: str | None = None, purpose: Purpose = Purpose.READ,
                     max_staleness_seconds: float | None = None, min_version: int | None = None,
                     version: int | None = None, timestamp: datetime | None = None, status=None,
                     now: datetime | None = None) -> Resolution:
    """Choose the location a reader in `region` should use for `table`.

    Args:
        runtime: the ReplicationRuntime (settings and connections).
        table: the table's configuration.
        region: the reader's Azure region (None: unknown; routing's default applies).
        purpose: WRITE always answers the current primary.
        max_staleness_seconds: skip locations further behind the primary than this.
        min_version: skip locations whose head is older (read-your-writes).
        version: the version to read; skip locations that do not hold it.
        timestamp: read the version committed at or before this time (by commit times).
        status: the StatusStore to read caught-up times from (default: the runtime's).
        now: the time staleness is measured at (default: now).

    Returns:
        The first qualifying location on the preference list.

    Raises:
        ValueError: contradictory or out-of-range arguments (nothing is probed).
        NoReadableLocation: no location qualifies; `tried` lists each with its reason.
        TopologyUnavailable: the function app's table storage does not answer and this process
            never read the topology: no location is named from configuration alone.
    """
    _check_arguments(max_staleness_seconds, min_version, version, timestamp)
    resolver = _Resolver(runtime, table, status=status, now=now or datetime.now(timezone.utc))
    if purpose == Purpose.WRITE:
        return resolver.primary_for_write()
    return resolver.resolve(region, max_staleness_seconds=max_staleness_seconds, min_version=min_version,
                            version=version, timestamp_ms=None if timestamp is None else to_ms(timestamp))


def _check_arguments(max_staleness_seconds, min_version, version, timestamp) -> None:
    if max_staleness_seconds is not None and (isinstance(max_staleness_seconds, bool)
                                              or not max_staleness_seconds >= 0):
        raise ValueError(f"max_staleness_seconds must be a number >= 0, got {max_staleness_seconds!r}")
    for name, value in (("min_version", min_version), ("version", version)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    if version is not None and timestamp is not None:
        raise ValueError("pass either version or timestamp, not both")
    if timestamp is not None and not isinstance(timestamp, datetime):
        raise ValueError(f"timestamp must be a datetime, got {type(timestamp).__name__}")


class _Resolver:
    def __init__(self, runtime, table: TableConfig, *, status, now: datetime) -> None:
        self.runtime = runtime
        self.table = table
        self.now = now
        self.known = reader_topology(runtime).get(table)
        self.primary = table.location(self.known.topology.primary)
        if self.known.stale:
            log.warning("read.topology_stale table=%s primary=%s epoch=%d reason=%s", table.name, self.primary.name,
                        self.known.topology.epoch, self.known.stale_reason, extra={"table": table.name})
        self._stores = probe_stores(runtime)
        self._probes: dict[str, LocationProbe] = {}
        self._status = status
        self._rows = None

    def probe(self, loc: LocationConfig) -> LocationProbe:
        if loc.name not in self._probes:
            self._probes[loc.name] = LocationProbe(self._stores.table(loc), loc)
        return self._probes[loc.name]

    def answer(self, loc: LocationConfig, version, staleness, basis, primary_ok, tried) -> Resolution:
        settings = self.runtime.settings[loc.connection]
        return Resolution(
            table=self.table.name, location=loc.name, region=loc.region, uri=abfss_uri(settings, loc),
            deltalake_uri=deltalake_uri(loc), version=version,
            staleness_seconds=None if staleness is None else round(staleness, 3), staleness_basis=basis,
            primary_reachable=primary_ok, tried=tuple(tried),
            requests={name: p.requests for name, p in self._probes.items()},
            storage_options=deltalake_options(settings), epoch=self.known.topology.epoch,
            topology_stale_reason=self.known.stale_reason)

    def primary_head(self) -> int | None:
        """The primary's head. With a stale topology, a fence there means a promote this process has
        not seen (and no marker of it was found) deposed it: TopologyUnavailable, not the ended lineage.
        ReplicaUnreachable when the primary does not answer."""
        probe = self.probe(self.primary)
        head = probe.head(None)
        if head is not None and self.known.stale and probe.fenced_at(head):
            raise TopologyUnavailable(
                f"table {self.table.name}: {self.known.stale_reason}; but {self.primary.name}, the primary it "
                f"names, is fenced at version {head}: a promotion this process has not seen deposed it, so no "
                "location is named. Retry when the function app's storage answers.")
        return head

    def primary_for_write(self) -> Resolution:
        try:
            head, ok = self.primary_head(), True
        except ReplicaUnreachable:
            head, ok = None, False
        log.info("read.resolved table=%s purpose=write location=%s version=%s primary_reachable=%s",
                 self.table.name, self.primary.name, head, ok,
                 extra={"table": self.table.name, "location": self.primary.name, "purpose": "write"})
        return self.answer(self.primary, head, 0.0, StalenessBasis.PRIMARY, ok, [])

    def status_rows(self) -> dict:
        if self._rows is None:
            try:
                # The short-timeout client: the host storage that may be down is the same one.
                store = self._status if self._status is not None else \
                    StatusStore(reader_topology(self.runtime).service())
                self._rows = {r.replica: r for r in store.list_rows(table=self.table.name)}
            except (ReplicationError, AzureError) as err:
                log.warning("read.status_unavailable table=%s error=%s", self.table.name, type(err).__name__)
                self._rows = {}
        return self._rows

    def resolve(self, region, *, max_staleness_seconds, min_version, version, timestamp_ms) -> Resolution:
        try:
            primary_head, primary_error = self.primary_head(), None
        except ReplicaUnreachable as err:
            primary_head, primary_error = None, err
        primary_ok = primary_error is None
        tried: list[Skipped] = []
        for loc in preference_list(self.table, region, primary=self.primary):
            try:
                chosen, staleness, basis = self.evaluate(
                    loc, primary_head, primary_error, max_staleness_seconds=max_staleness_seconds,
                    min_version=min_version, version=version, timestamp_ms=timestamp_ms)
            except ReplicaUnreachable as err:
                skip = _Skip(SkipReason.UNREACHABLE, str(err))
            except _Skip as err:
                skip = err
            else:
                log.info("read.resolved table=%s region=%s location=%s version=%s staleness_seconds=%s basis=%s "
                         "primary_reachable=%s skipped=%s", self.table.name, region, loc.name, chosen,
                         staleness if staleness is None else round(staleness, 3), basis.value, primary_ok,
                         ",".join(f"{t.location}:{t.reason.value}" for t in tried) or "-",
                         extra={"table": self.table.name, "location": loc.name, "version": chosen})
                return self.answer(loc, chosen, staleness, basis, primary_ok, tried)
            tried.append(Skipped(loc.name, skip.reason, skip.detail))
            log.info("read.skipped table=%s region=%s location=%s reason=%s detail=%s", self.table.name, region,
                     loc.name, skip.reason.value, skip.detail,
                     extra={"table": self.table.name, "location": loc.name, "reason": skip.reason.value})
        listing = "; ".join(f"{t.location}: {t.reason.value} ({t.detail})" for t in tried)
        log.warning("read.no_location table=%s region=%s tried=%s", self.table.name, region,
                    ",".join(f"{t.location}:{t.reason.value}" for t in tried))
        raise NoReadableLocation(
            f"no location of table {self.table.name} can serve this read; tried {listing}. Relax the bound "
            "(max_staleness_seconds, min_version, version or timestamp) or wait for the locations to recover.",
            tried)

    def evaluate(self, loc, primary_head, primary_error, *, max_staleness_seconds, min_version, version,
                 timestamp_ms):
        primary_ok = primary_error is None
        probe = self.probe(loc)
        row = cap = None
        if loc == self.primary:
            if not primary_ok:
                raise primary_error
            head, staleness, basis = primary_head, 0.0, StalenessBasis.PRIMARY
        else:
            if not primary_ok:
                row = self.status_rows().get(loc.name)
            head = probe.head(primary_head if primary_ok else (row.replica_version if row else None))
            if primary_ok:
                self.check_not_diverged(loc, probe, head, primary_head)
                staleness, basis = self.measured_staleness(head, primary_head), StalenessBasis.MEASURED
            elif row is not None and row.status == "diverged":
                raise _Skip(SkipReason.DIVERGED, f"the last lag check ({row.checked_at}) found it diverged")
            elif (deposed := self.deposed(loc, row)) is not None:
                # A deposed primary not seen following since: only the versions it shares with the
                # new lineage are known to be the table's (above them: outage writes or the fence).
                cap, staleness, basis = deposed, None, StalenessBasis.UNKNOWN
            elif row is not None and row.caught_up_at:
                since = datetime.fromisoformat(row.caught_up_at)
                staleness, basis = max(0.0, (self.now - since).total_seconds()), StalenessBasis.LAST_CAUGHT_UP
            else:
                staleness, basis = None, StalenessBasis.UNKNOWN
        if head is None:
            raise _Skip(SkipReason.EMPTY, "holds no version yet")
        if cap is not None:
            promotion = cap
            if version is not None and version > promotion.promoted_at_version:
                raise _Skip(SkipReason.VERSION_UNAVAILABLE, self.deposed_detail(loc, promotion, version))
            head = min(head, promotion.promoted_at_version)
        if min_version is not None and head < min_version:
            raise _Skip(SkipReason.BEHIND_MIN_VERSION, f"at version {head}, behind min_version {min_version}")
        if max_staleness_seconds is not None:
            if staleness is None:
                raise _Skip(SkipReason.STALENESS_UNKNOWN, "the primary is unreachable and no lag check has seen "
                            "this replica caught up")
            if staleness > max_staleness_seconds:
                raise _Skip(SkipReason.TOO_STALE, f"too stale by {staleness - max_staleness_seconds:.1f} s "
                            f"({staleness:.1f} s behind, bound {max_staleness_seconds:g} s, {basis.value})")
        if version is not None:
            return self.holding(probe, version, head), staleness, basis
        if timestamp_ms is not None:
            chosen = self.at_timestamp(loc, probe, timestamp_ms, head, primary_head, row)
            return self.holding(probe, chosen, head), staleness, basis
        return head, staleness, basis

    def deposed(self, loc, row):
        """The promotion that last deposed `loc` (a former primary), unless it rejoined since or a
        lag check has seen it since healthy or lagging against the new lineage; else None."""
        deposing = [h for h in self.known.history
                    if h.previous_primary == loc.name and h.promoted_at_version is not None]
        if not deposing:
            return None
        last = max(deposing, key=lambda h: h.epoch)
        if self.known.rejoins.get(loc.name, -1) >= last.epoch:
            return None  # rejoined since: a replica of the new lineage
        if row is not None and last.promoted_at and row.checked_at and row.status in ("healthy", "lagging") \
                and datetime.fromisoformat(row.checked_at) > datetime.fromisoformat(last.promoted_at):
            return None
        return last

    def deposed_detail(self, loc, promotion, version: int) -> str:
        return (f"version {version} is not known to be the table's here: {loc.name} was deposed at epoch "
                f"{promotion.epoch} at version {promotion.promoted_at_version}, the primary does not answer, and no "
                "lag check has seen it following the new primary since (its later versions may be outage writes "
                "or the fence until it is rejoined)")

    def check_not_diverged(self, loc, probe: LocationProbe, head: int | None, primary_head: int | None) -> None:
        if head is None:
            return
        if primary_head is None or head > primary_head:
            raise _Skip(SkipReason.DIVERGED, f"at version {head}, ahead of the primary's {primary_head}")
        mine, theirs = probe.commit(head), self.probe(self.primary).commit(head)
        if theirs is None:
            return  # the primary cleaned that commit up; nothing to compare against
        if not same_commit(mine, theirs, lambda: probe.commit_bytes(head),
                           lambda: self.probe(self.primary).commit_bytes(head)):
            raise _Skip(SkipReason.DIVERGED, f"its commit {head} differs from the primary's")

    def measured_staleness(self, head: int | None, primary_head: int | None) -> float | None:
        if head is None or primary_head is None or head >= primary_head:
            return 0.0
        try:
            missing_since = self.probe(self.primary).commit_time(head + 1)
        except TimestampUnavailable:
            return None
        return max(0.0, self.now.timestamp() - missing_since / 1000)

    @staticmethod
    def holding(probe: LocationProbe, version: int, head: int) -> int:
        """`version`, when a reader can load it here: not past the head, and no hole in its chain
        (the commits from its checkpoint, or from version 0, up to it)."""
        if version > head:
            raise _Skip(SkipReason.VERSION_UNAVAILABLE, f"version {version} is newer than its head {head}")
        missing = probe.missing_under(version)
        if missing is not None:
            raise _Skip(SkipReason.VERSION_UNAVAILABLE,
                        f"version {version} does not read here: commit {missing} is missing and no checkpoint "
                        f"from version {missing} to {version} covers it (a hole in its history, or older "
                        "than the history it holds)")
        return version

    def at_timestamp(self, loc, probe: LocationProbe, timestamp_ms: int, head: int, primary_head, row) -> int:
        earliest = probe.earliest_version()
        try:
            chosen = version_at_timestamp(probe.commit_time, timestamp_ms, earliest=earliest, head=head)
        except TimestampUnavailable as err:
            raise _Skip(SkipReason.VERSION_UNAVAILABLE, str(err)) from None
        if chosen < head or loc == self.primary:
            return chosen
        # The answer is this replica's head: right only if no newer commit is at or before the timestamp.
        if primary_head is not None:
            try:
                next_commit = self.probe(self.primary).commit_time(head + 1) if head < primary_head else None
            except TimestampUnavailable as err:
                raise _Skip(SkipReason.VERSION_UNAVAILABLE, f"cannot tell which version the timestamp means: {err}") \
                    from None
            if next_commit is not None and next_commit <= timestamp_ms:
                raise _Skip(SkipReason.VERSION_UNAVAILABLE,
                            f"the timestamp needs a version after {head}, which it does not hold yet")
            return chosen
        if row is None or not row.caught_up_at or to_ms(datetime.fromisoformat(row.caught_up_at)) <= timestamp_ms:
            raise _Skip(SkipReason.VERSION_UNAVAILABLE,
                        "the primary is unreachable and this replica was not seen caught up after the timestamp")
        return chosen
