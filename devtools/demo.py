"""Demo: replicate a live Delta table from eastus to westeu and seasia on local Azurite.

Starts two private Azurite processes (seasia is its own "region", so copies to it stream
through the function instead of server-side), writes a Delta table with deltalake, and
runs the local event relay, which turns each new `_delta_log` blob into a real Event Grid
BlobCreated event for the `replicate_commit` function. After every write it prints each
replica's status (version and state, as `python -m cli status` shows them), and at the end
checks that every replica reads the same rows as the primary at every version.

Run: bash scripts/demo.sh
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
from datetime import datetime, timezone

import azure.functions as func
import pyarrow as pa
from azure.storage.blob import BlobServiceClient
from deltalake import DeltaTable, write_deltalake

from devtools.azurite import AzuriteProcess

CONTAINER = "lake"
TABLE_PATH = "delta/sales"


def _rows(table: pa.Table) -> list:
    cols = sorted(table.column_names)
    return sorted(tuple(repr(r[c]) for c in cols) for r in table.select(cols).to_pylist())


def _batch(start: int, n: int) -> pa.Table:
    regions = ["us east", "50% off", "a=b", "münchen"]
    ids = list(range(start, start + n))
    return pa.table({"id": pa.array(ids, pa.int64()), "region": [regions[i % 4] for i in ids],
                     "amount": [i * 2.5 for i in ids]})


def main() -> int:
    # A SIGTERM unwinds normally, so the Azurite processes this started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    with AzuriteProcess(("eastus", "westeu"), with_table=True) as primary_region, AzuriteProcess(("seasia",)) as far_region:
        settings = {
            # The function app's own storage: replication leases live there, never in replicas.
            "AzureWebJobsStorage": primary_region.connection_string("devstoreaccount1"),
            "EASTUS_STORAGE": primary_region.connection_string("eastus"),
            "WESTEU_STORAGE": primary_region.connection_string("westeu"),
            "SEASIA_STORAGE": far_region.connection_string("seasia"),
        }
        config = {"tables": [{
            "name": "sales",
            "source": {"connection": "EASTUS_STORAGE", "container": CONTAINER, "path": TABLE_PATH},
            "replicas": [
                {"name": "westeu", "connection": "WESTEU_STORAGE", "container": CONTAINER, "path": TABLE_PATH},
                {"name": "seasia", "connection": "SEASIA_STORAGE", "container": CONTAINER, "path": TABLE_PATH},
            ],
        }]}
        os.environ.update(settings)
        os.environ["REPLICATION_CONFIG"] = json.dumps(config)
        from functions.replicate_commit import (
            replicate_commit,  # after the settings exist
        )
        from shared.runtime import reset_runtime

        reset_runtime()
        source = BlobServiceClient.from_connection_string(settings["EASTUS_STORAGE"])
        source.create_container(CONTAINER)
        uri = f"az://{CONTAINER}/{TABLE_PATH}"
        options = {"eastus": primary_region.storage_options("eastus"),
                   "westeu": primary_region.storage_options("westeu"),
                   "seasia": far_region.storage_options("seasia")}
        from shared.health.lag import measure_table
        from devtools.relay import LogRelay
        from shared.runtime import get_runtime

        def deliver(envelope: dict) -> None:
            # What the Functions host does with an Event Grid delivery: build the event, call the function.
            replicate_commit(func.EventGridEvent(
                id=envelope["id"], data=envelope["data"], topic=envelope["topic"],
                subject=envelope["subject"], event_type=envelope["eventType"],
                event_time=datetime.now(timezone.utc), data_version=""))

        state = tempfile.NamedTemporaryFile(prefix="relay-", suffix=".json", delete=False).name
        os.unlink(state)
        relay = LogRelay(get_runtime(), state, deliver)

        def replicate(step: str) -> None:
            events = relay.poll()
            lags = measure_table(get_runtime().replicators["sales"])
            status = "  ".join(f"{l.replica}=v{l.replica_version} ({l.status.value})" for l in lags)
            print(f"{step:<28} events={events:<2} eastus=v{lags[0].source_version}  {status}")

        print("Replicating az://lake/delta/sales from eastus to westeu (same Azurite) and seasia (another one)\n")
        write_deltalake(uri, _batch(0, 20), partition_by=["region"], storage_options=options["eastus"],
                        configuration={"delta.enableChangeDataFeed": "true"})
        replicate("create table (4 partitions)")
        for i in range(1, 4):
            write_deltalake(uri, _batch(i * 20, 20), mode="append", partition_by=["region"], storage_options=options["eastus"])
            replicate(f"append #{i}")
        DeltaTable(uri, storage_options=options["eastus"]).optimize.compact()
        replicate("optimize (compaction)")
        DeltaTable(uri, storage_options=options["eastus"]).delete("id % 5 = 0")
        replicate("delete id % 5 = 0")
        DeltaTable(uri, storage_options=options["eastus"]).update(updates={"amount": "amount * 2"}, predicate="region = 'a=b'")
        replicate("update region = 'a=b'")
        (DeltaTable(uri, storage_options=options["eastus"])
            .merge(_batch(70, 30), predicate="t.id = s.id", source_alias="s", target_alias="t")
            .when_matched_update_all().when_not_matched_insert_all().execute())
        replicate("merge 30 rows")
        DeltaTable(uri, storage_options=options["eastus"]).create_checkpoint()
        replicate("checkpoint")
        write_deltalake(uri, _batch(500, 10), mode="append", partition_by=["region"], storage_options=options["eastus"])
        replicate("append after checkpoint")

        head = DeltaTable(uri, storage_options=options["eastus"]).version()
        mismatches = []
        for version in range(head + 1):
            expected = _rows(DeltaTable(uri, version=version, storage_options=options["eastus"]).to_pyarrow_table())
            for replica in ("westeu", "seasia"):
                got = _rows(DeltaTable(uri, version=version, storage_options=options[replica]).to_pyarrow_table())
                if got != expected:
                    mismatches.append((replica, version))
        reset_runtime()
        if mismatches:
            print(f"\nFAILED: replicas differ from the primary at {mismatches}")
            return 1
        print(f"\nOK: westeu and seasia read the same rows as eastus at every version 0..{head}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
