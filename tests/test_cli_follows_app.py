"""The CLI uses the app's own helpers: deltalake options for every connection kind (SAS included),
`verify` and `sync` follow the topology, and `sync` runs the purge a VACUUM END triggers."""

from __future__ import annotations

import time

from shared.failover.promote import promote
from shared.failover.rejoin import rejoin
from tests.support.failover import failover_lake, write_to
from tests.support.lake import batch
from tests.test_cli import run_cli
from tests.test_log_paths import sas_connection


def test_verify_reads_with_sas_connections(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.write(batch(5, 5), partition_by=["region"])
    lake.deliver_all(lake.events())
    for account in ("eastus", "westeu", "seasia"):
        lake.environ[f"{account.upper()}_STORAGE"] = sas_connection(lake, account)
    result = run_cli(lake, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sales/westeu: OK" in result.stdout and "sales/seasia: OK" in result.stdout


def test_verify_and_sync_follow_the_topology_after_a_failover(azurite, request):
    lake = failover_lake(azurite, request.node.name)
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        lake.deliver_all(lake.events())
        promote(lake.runtime, lake.table_name, "westeu", force=True)
        # The forced promote fenced eastus (a fence commit at its version 1); rejoin quarantines the fence
        # so that eastus follows westeu like any replica.
        rejoin(lake.runtime, lake.table_name, "eastus")
        write_to(lake, "westeu", batch(5, 5), partition_by=["region"])  # version 1, on the new primary only
        synced = run_cli(lake, "sync", "--quiet")
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert lake.head("eastus") == lake.head("seasia") == 1  # caught up from westeu
        verified = run_cli(lake, "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert {line.split(":")[0] for line in verified.stdout.splitlines() if line.endswith("OK")} == \
            {f"{lake.table_name}/eastus", f"{lake.table_name}/seasia"}
    finally:
        lake.close()


def test_sync_purges_what_a_vacuum_on_the_primary_removed(lake):
    lake.write(batch(0, 5), mode="overwrite", configuration={"delta.deletedFileRetentionDuration": "interval 0 seconds"})
    lake.deliver_all(lake.events())
    first_files = {n for n in lake.blobs("eastus") if n.endswith(".parquet")}
    lake.write(batch(5, 5), mode="overwrite")
    time.sleep(1.1)  # VACUUM compares deletion timestamps (ms) with now: they must be in the past
    vacuumed = lake.table().vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    assert vacuumed
    result = run_cli(lake, "sync", "--quiet")  # no events: the CLI alone carries the VACUUM END
    assert result.returncode == 0, result.stdout + result.stderr
    for account in ("westeu", "seasia"):
        assert not first_files & set(lake.blobs(account)), f"{account} still holds vacuumed files"
