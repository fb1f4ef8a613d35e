"""One consolidation run: for each source, merge the rows of its new commits into the global table.

Per source, the position is the target's txn for `<consolidation>/<source>`; a run reads at
most `max_commits_per_run` commits after it and merges them in batches of at most
`max_merge_bytes`, each batch one commit carrying the txn. One run per consolidation at a
time (a lease in the function app's storage); a source that cannot be read is recorded and
alerted on once, and the other sources still run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from shared import failpoints
from shared.config.model import ConsolidationConfig, ConsolidationSource
from shared.consolidation.merge import TargetTable
from shared.consolidation.reader import (
    CommitRows,
    ReadStats,
    plan_commits,
    snapshot_batches,
    source_table_id,
)
from shared.consolidation.state import (
    ALERT_OK,
    ALERT_UNREACHABLE,
    ConsolidationStatusRow,
    ConsolidationStatusStore,
)
from shared.errors import ReplicationError, ReplicaUnreachable, SourceHistoryMissing
from shared.health.alerts import (
    CONSOLIDATION_SOURCE_RECOVERED,
    CONSOLIDATION_SOURCE_UNREACHABLE,
    settle_alert,
)
from shared.storage.locations import deltalake_options, deltalake_uri

# Published once when a source's metaData.id changes (dropped and re-created), subject
# consolidations/<name>/sources/<source>.
CONSOLIDATION_SOURCE_RECREATED = "DeltaReplication.ConsolidationSourceRecreated"

log = logging.getLogger(__name__)

UP_TO_DATE = "up_to_date"
BEHIND = "behind"
UNREACHABLE = "unreachable"
ERROR = "error"


@dataclass
class SourceOutcome:
    """What one run did for one source."""

    consolidation: str
    source: str
    region: str
    status: str
    start_version: int | None = None  # the recorded position before the run
    merged_version: int | None = None  # the recorded position after it
    source_version: int | None = None
    versions_behind: int = 0
    commits_read: int = 0
    files_read: int = 0
    bytes_read: int = 0
    rows_read: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    target_commits: int = 0
    fallback: bool = False
    error: str = ""
    seconds: float = 0.0
    source_table_id: str = ""  # the source's metaData.id read by this run

    def as_json(self) -> dict:
        return asdict(self)


ProgressFn = Callable[[str, int], None]


def run_consolidation(runtime, consolidation: ConsolidationConfig, status: ConsolidationStatusStore, alerts, *,
                      progress: ProgressFn | None = None) -> list[SourceOutcome]:
    """Merge every source's new rows into the target once, holding the consolidation's lease.

    Args:
        runtime: the host runtime (clients, settings, leases).
        status: where per-source rows go; alerts: an AlertPublisher or None.
        progress: called with (source name, rows merged) after each batch.

    Returns:
        One outcome per source, in configuration order.

    Raises:
        ReplicaBusy: another run held the lease for too long.
    """
    with runtime.lease_store().hold(f"consolidations/{consolidation.name}"):
        target_settings = runtime.settings[consolidation.target.connection]
        runtime.stores.table(consolidation.target).ensure_container()
        target = TargetTable(deltalake_uri(consolidation.target), deltalake_options(target_settings),
                             keys=consolidation.keys, on_match=consolidation.on_match,
                             partition_by=consolidation.partition_by, label=consolidation.target.describe())
        previous = {row.source: row for row in status.list_rows(consolidation=consolidation.name)}
        outcomes = []
        for source in consolidation.sources:
            outcome = _run_source(runtime, consolidation, source, target, progress, previous.get(source.name), alerts)
            _record(status, alerts, outcome, previous.get(source.name))
            outcomes.append(outcome)
        return outcomes


def _run_source(runtime, consolidation: ConsolidationConfig, source: ConsolidationSource, target: TargetTable,
                progress: ProgressFn | None, previous: ConsolidationStatusRow | None = None,
                alerts=None) -> SourceOutcome:
    began = time.monotonic()
    outcome = SourceOutcome(consolidation.name, source.name, source.region, UP_TO_DATE)
    app_id = consolidation.app_id(source)
    stats = ReadStats()
    try:
        start, types = target.position(app_id)
        store = runtime.stores.folder(source.location, source.location.path, label=source.name)
        identity = source_table_id(store)
        if identity is not None:
            start = _incarnation_start(target, app_id, identity, start, previous, outcome, alerts)
        outcome.start_version = outcome.merged_version = start
        plan = plan_commits(store, start, consolidation.max_commits_per_run, stats)
        try:
            if plan.history_missing:
                raise SourceHistoryMissing(f"source {source.name}: the commits after version {start} are gone")
            rows = CommitRows(store, source, region_column=consolidation.region_column,
                              known_types=types, max_bytes=consolidation.max_merge_bytes, stats=stats)
            _merge_batches(rows.batches(plan), target, app_id, outcome, source, progress, identity)
        except SourceHistoryMissing as err:
            start = target.transaction_version(f"{app_id}@{identity}" if identity else app_id)
            log.warning("consolidation.fallback_snapshot consolidation=%s source=%s position=%s reason=%s",
                        consolidation.name, source.name, start, err,
                        extra={"consolidation": consolidation.name, "source": source.name})
            outcome.fallback = True
            batches = snapshot_batches(store, source, start=start, region_column=consolidation.region_column,
                                       known_types=types, max_bytes=consolidation.max_merge_bytes, stats=stats)
            _merge_batches(batches, target, app_id, outcome, source, progress, identity)
        outcome.source_version = stats.head
        outcome.status = BEHIND if stats.behind else UP_TO_DATE
        if stats.head is not None and outcome.merged_version is not None:
            outcome.versions_behind = max(0, stats.head - outcome.merged_version)
        elif stats.head is not None:
            outcome.versions_behind = stats.head + 1
    except ReplicaUnreachable as err:
        outcome.status, outcome.error = UNREACHABLE, str(err)
    except ReplicationError as err:
        outcome.status, outcome.error = ERROR, str(err)
    except OSError as err:
        # deltalake reports an unreachable account as OSError (object_store errors).
        outcome.status, outcome.error = UNREACHABLE, f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    except Exception as err:  # noqa: BLE001 - one source's surprise never blocks the others or later runs
        log.exception("consolidation.source_failed consolidation=%s source=%s", consolidation.name, source.name)
        first = (str(err).splitlines() or [""])[0][:300]
        outcome.status, outcome.error = ERROR, f"unexpected {type(err).__name__}: {first}"
    outcome.commits_read, outcome.files_read = stats.commits, stats.files
    outcome.bytes_read, outcome.rows_read = stats.bytes_read, stats.rows
    outcome.seconds = round(time.monotonic() - began, 3)
    level = logging.WARNING if outcome.status in (UNREACHABLE, ERROR) else logging.INFO
    log.log(level, "consolidation.source_done consolidation=%s source=%s status=%s from=%s to=%s commits=%d "
            "rows_read=%d inserted=%d updated=%d bytes_read=%d fallback=%s seconds=%.2f error=%s",
            outcome.consolidation, outcome.source, outcome.status, outcome.start_version, outcome.merged_version,
            outcome.commits_read, outcome.rows_read, outcome.rows_inserted, outcome.rows_updated,
            outcome.bytes_read, outcome.fallback, outcome.seconds, outcome.error or "-",
            extra={"consolidation": outcome.consolidation, "source": outcome.source, "status": outcome.status})
    return outcome


def _incarnation_start(target: TargetTable, app_id: str, identity: str, start: int | None,
                       previous: ConsolidationStatusRow | None, outcome: SourceOutcome, alerts) -> int | None:
    """The position of this incarnation of the source (its `metaData.id`); None reads it from version 0.

    The target records `<app_id>@<id>` with every position. A position without the current id's
    record belongs to another incarnation when the status row names an id (the source was dropped and
    re-created: reported once, WARNING and alert; the old incarnation's rows stay), or was recorded
    before identities were (adopted once for the current one).
    """
    own = target.transaction_version(f"{app_id}@{identity}")
    recorded = previous.source_table_id if previous is not None else ""
    outcome.source_table_id = identity
    if own is not None:
        return own
    if start is None:
        return None  # a new source
    if not recorded:
        target.merge(None, app_id=app_id, version=start, advances=True, identity=identity)  # adopt it
        return start
    if recorded != identity:
        log.warning("consolidation.source_recreated consolidation=%s source=%s table_id=%s previous_table_id=%s "
                    "position=%s: the source was dropped and re-created; its new versions are read from version 0 "
                    "and the rows already merged stay", outcome.consolidation, outcome.source, identity, recorded,
                    start, extra={"consolidation": outcome.consolidation, "source": outcome.source})
        if alerts is not None:
            try:
                alerts.publish_consolidation(CONSOLIDATION_SOURCE_RECREATED, {
                    "consolidation": outcome.consolidation, "source": outcome.source, "region": outcome.region,
                    "tableId": identity, "previousTableId": recorded, "previousPosition": start})
            except Exception as err:  # noqa: BLE001 - keep the old id recorded: reported again next run
                log.warning("alert.failed type=%s consolidation=%s source=%s error=%s", CONSOLIDATION_SOURCE_RECREATED,
                            outcome.consolidation, outcome.source, type(err).__name__)
                outcome.source_table_id = recorded
    return None


def _merge_batches(batches, target: TargetTable, app_id: str, outcome: SourceOutcome,
                   source: ConsolidationSource, progress: ProgressFn | None, identity: str | None = None) -> None:
    for batch in batches:
        failpoints.hit(failpoints.CONSOLIDATION_READ)
        result = target.merge(batch.rows, app_id=app_id, version=batch.version, advances=batch.advances,
                              identity=identity)
        outcome.rows_inserted += result.inserted
        outcome.rows_updated += result.updated
        outcome.target_commits += int(result.committed)
        if batch.version is not None and (outcome.merged_version is None or batch.version > outcome.merged_version):
            outcome.merged_version = batch.version
        if progress is not None:
            progress(source.name, result.inserted + result.updated)


def _record(status: ConsolidationStatusStore, alerts, outcome: SourceOutcome,
            previous: ConsolidationStatusRow | None) -> None:
    before = previous.alert_state if previous is not None else ALERT_OK
    state = ALERT_UNREACHABLE if outcome.status in (UNREACHABLE, ERROR) else ALERT_OK
    if state != before and alerts is not None:
        event_type = CONSOLIDATION_SOURCE_UNREACHABLE if state == ALERT_UNREACHABLE else CONSOLIDATION_SOURCE_RECOVERED
        state = settle_alert(before, state, lambda: alerts.publish_consolidation(event_type, {
            "consolidation": outcome.consolidation, "source": outcome.source, "region": outcome.region,
            "status": outcome.status, "lastMergedVersion": outcome.merged_version,
            "sourceVersion": outcome.source_version, "error": outcome.error,
        }), describe=f"type={event_type} consolidation={outcome.consolidation} source={outcome.source}")
    keep_versions = outcome.status in (UNREACHABLE, ERROR) and previous is not None
    status.put_row(ConsolidationStatusRow(
        consolidation=outcome.consolidation, source=outcome.source, region=outcome.region,
        last_merged_version=previous.last_merged_version if keep_versions and outcome.merged_version is None
        else outcome.merged_version,
        source_version=previous.source_version if keep_versions else outcome.source_version,
        versions_behind=previous.versions_behind if keep_versions else outcome.versions_behind,
        rows_merged_last_run=outcome.rows_inserted + outcome.rows_updated,
        last_run_at=datetime.now(timezone.utc).isoformat(), status=outcome.status, last_error=outcome.error,
        fallback=outcome.fallback, alert_state=state,
        source_table_id=outcome.source_table_id or (previous.source_table_id if previous is not None else ""),
    ))
