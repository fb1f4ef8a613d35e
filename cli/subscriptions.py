"""Event Grid subscription filters a configuration needs, per source storage account."""

from __future__ import annotations

from shared.replication.events import BLOB_CREATED, BLOB_RENAMED


def subscription_filters(config, source_accounts: dict[str, str]) -> dict:
    """One subscription per table: its `_delta_log/` subject prefix, BlobCreated and BlobRenamed.

    ADLS Gen2 writers fire CreateFile (empty) then FlushWithClose; the advanced filter drops
    CreateFile deliveries so replication starts when content exists (it would retry anyway).
    """
    accounts: dict[str, dict] = {}
    for table in config.tables:
        src = table.source
        account = accounts.setdefault(src.connection, {
            "connection": src.connection, "account": source_accounts.get(src.connection, ""), "subscriptions": []})
        account["subscriptions"].append({
            "name": f"delta-{table.name}",
            "table": table.name,
            "filter": {
                "includedEventTypes": [BLOB_CREATED, BLOB_RENAMED],
                "subjectBeginsWith": f"/blobServices/default/containers/{src.container}/blobs/{src.path}/_delta_log/",
                "advancedFilters": [
                    {"operatorType": "StringNotIn", "key": "data.api", "values": ["CreateFile"]},
                ],
            },
        })
    return {"sourceAccounts": list(accounts.values())}
