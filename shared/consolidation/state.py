"""The ConsolidationStatus Azure Table: one row per consolidation and source.

PartitionKey = consolidation name, RowKey = source name; columns Region, LastMergedVersion
(the target's txn for the source, -1 none), SourceVersion (-1 unknown), VersionsBehind,
RowsMergedLastRun, LastRunAt, Status (up_to_date, behind, unreachable, error), LastError,
Fallback (the last run merged the source's snapshot), AlertState (ok or unreachable, so an
alert fires once per transition). Display only: progress lives in the target's txn.
"""

from __future__ import annotations

from dataclasses import dataclass

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient, UpdateMode

from shared.storage.host_table import HostTable

CONSOLIDATION_STATUS_TABLE = "ConsolidationStatus"
ALERT_OK = "ok"
ALERT_UNREACHABLE = "unreachable"


def _version(value) -> int | None:
    return None if value is None or int(value) < 0 else int(value)


@dataclass(frozen=True)
class ConsolidationStatusRow:
    consolidation: str
    source: str
    region: str
    last_merged_version: int | None
    source_version: int | None
    versions_behind: int
    rows_merged_last_run: int
    last_run_at: str
    status: str
    last_error: str
    fallback: bool = False
    alert_state: str = ALERT_OK
    source_table_id: str = ""  # the source's metaData.id when last read (its incarnation)

    def as_json(self) -> dict:
        return {
            "consolidation": self.consolidation, "source": self.source, "region": self.region,
            "lastMergedVersion": self.last_merged_version, "sourceVersion": self.source_version,
            "versionsBehind": self.versions_behind, "rowsMergedLastRun": self.rows_merged_last_run,
            "lastRunAt": self.last_run_at, "status": self.status, "lastError": self.last_error,
            "fallback": self.fallback, "sourceTableId": self.source_table_id,
        }


class ConsolidationStatusStore(HostTable):
    """Rows of the ConsolidationStatus table.

    Args:
        service: a TableServiceClient for the status connection (the function app's storage).
    """

    def __init__(self, service: TableServiceClient, *, table_name: str = CONSOLIDATION_STATUS_TABLE) -> None:
        super().__init__(service, table_name)

    def list_rows(self, *, consolidation: str | None = None) -> list[ConsolidationStatusRow]:
        """Every row, or one consolidation's; empty when the table does not exist yet."""
        try:
            with self._errors("reading the consolidation status rows"):
                if consolidation is None:
                    entities = list(self._table.list_entities())
                else:
                    entities = list(self._table.query_entities("PartitionKey eq @pk",
                                                               parameters={"pk": consolidation}))
        except ResourceNotFoundError:
            return []
        return sorted((self._row(e) for e in entities), key=lambda r: (r.consolidation, r.source))

    def put_row(self, row: ConsolidationStatusRow) -> None:
        self._ensure_table()
        self._table.upsert_entity({
            "PartitionKey": row.consolidation, "RowKey": row.source, "Region": row.region,
            "LastMergedVersion": -1 if row.last_merged_version is None else row.last_merged_version,
            "SourceVersion": -1 if row.source_version is None else row.source_version,
            "VersionsBehind": row.versions_behind, "RowsMergedLastRun": row.rows_merged_last_run,
            "LastRunAt": row.last_run_at, "Status": row.status, "LastError": row.last_error,
            "Fallback": row.fallback, "AlertState": row.alert_state, "SourceTableId": row.source_table_id,
        }, mode=UpdateMode.MERGE)

    @staticmethod
    def _row(entity) -> ConsolidationStatusRow:
        return ConsolidationStatusRow(
            consolidation=entity["PartitionKey"], source=entity["RowKey"], region=entity.get("Region", ""),
            last_merged_version=_version(entity.get("LastMergedVersion")),
            source_version=_version(entity.get("SourceVersion")),
            versions_behind=int(entity.get("VersionsBehind", 0)),
            rows_merged_last_run=int(entity.get("RowsMergedLastRun", 0)),
            last_run_at=str(entity.get("LastRunAt", "")), status=entity.get("Status", ""),
            last_error=entity.get("LastError", ""), fallback=bool(entity.get("Fallback", False)),
            alert_state=entity.get("AlertState", ALERT_OK), source_table_id=entity.get("SourceTableId", ""),
        )
