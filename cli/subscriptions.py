"""Event Grid subscription filters a configuration needs, per storage account that can be primary."""

from __future__ import annotations

from shared.replication.events import BLOB_CREATED, BLOB_RENAMED
from shared.storage.clients import CLIENT_REQUEST_ID_PREFIX


def subscription_filters(config, accounts: dict[str, str]) -> dict:
    """One subscription per table and location: its `_delta_log/` subject prefix, BlobCreated and BlobRenamed;
    and per account the containers the app writes there (`containers`, for the template's roles).

    Every location of a table (source and replicas) gets one, because any of them may become
    the primary after `python -m cli promote`; events from a location that is not the primary
    are fenced by replicate_commit. Two advanced filters keep deliveries cheap:
    - ADLS Gen2 writers fire CreateFile (empty) then FlushWithClose; CreateFile deliveries are
      dropped so replication starts when content exists (it would retry anyway);
    - the replicator tags its own writes (x-ms-client-request-id starting with
      CLIENT_REQUEST_ID_PREFIX), so each replica write raises no delivery at all.

    Args:
        config: the replication configuration.
        accounts: connection name -> storage account name ("" when it cannot be resolved).
    """
    by_connection: dict[str, dict] = {}
    for table in config.tables:
        for loc in table.locations:
            account = by_connection.setdefault(loc.connection, {
                "connection": loc.connection, "account": accounts.get(loc.connection, ""), "subscriptions": []})
            # The source keeps the name it always had; other locations add theirs (names are per account).
            name = f"delta-{table.name}" if loc is table.source else f"delta-{table.name}-{loc.name}"
            account["subscriptions"].append({
                "name": name,
                "table": table.name,
                "filter": {
                    "includedEventTypes": [BLOB_CREATED, BLOB_RENAMED],
                    "subjectBeginsWith": f"/blobServices/default/containers/{loc.container}/blobs/{loc.path}/_delta_log/",
                    "advancedFilters": [
                        {"operatorType": "StringNotIn", "key": "data.api", "values": ["CreateFile"]},
                        {"operatorType": "StringNotBeginsWith", "key": "data.clientRequestId",
                         "values": [CLIENT_REQUEST_ID_PREFIX]},
                    ],
                },
            })
    # The containers the app writes in each account once any location there is a replica (every location
    # can be, after a failover): replication, rejoin's quarantine and deletes, retention, snapshots.
    # infra/main.bicep creates them and scopes Storage Blob Data Contributor to exactly these.
    written: dict[str, list[str]] = {name: [] for name in by_connection}
    for table in config.tables:
        for loc in table.locations:
            written[loc.connection].append(loc.container)
        if table.snapshots is not None:
            written[table.replica(table.snapshots.replica).connection].append(table.snapshots.container)
    for consolidation in config.consolidations:
        if consolidation.target.connection in written:
            written[consolidation.target.connection].append(consolidation.target.container)
    for name, account in by_connection.items():
        account["containers"] = sorted(set(written[name]))
    return {"sourceAccounts": list(by_connection.values())}
