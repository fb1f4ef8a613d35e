"""Consolidation under faults: SIGKILL at each step, two runs at once, a region's Azurite stopped."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from azure.storage.blob import BlobLeaseClient, BlobServiceClient

from shared import failpoints
from shared.config.parse import parse_config
from shared.consolidation.merge import TargetTable
from shared.consolidation.run import run_consolidation
from shared.storage.locations import deltalake_options, deltalake_uri
from shared.runtime import ReplicationRuntime
from shared.storage.lease import LOCKS_CONTAINER
from tests.support.alert_sink import AlertSink
from tests.support.regions import REGIONS, Regions, orders

REPO = Path(__file__).resolve().parents[2]


def write_backlog(regions: Regions, *, repeat: bool = True) -> list[tuple]:
    """Per region: commits with overlapping ids (0..11, 6..17, and 6..17 again) -> 18 keys per region."""
    for region in REGIONS:
        regions.write(region, orders(region, range(0, 12)))
        regions.write(region, orders(region, range(6, 18)))
        if repeat:
            regions.write(region, orders(region, range(6, 18)))
    return sorted((r, i) for r in REGIONS for i in range(18))


def assert_exactly_once(regions: Regions, expected: list[tuple]) -> None:
    keys = regions.global_keys()
    assert len(keys) == len(set(keys)), "a key was inserted twice"
    assert keys == expected
    assert {r: regions.txn(r) for r in REGIONS} == {r: regions.table(r).version() for r in REGIONS}


@pytest.mark.parametrize("failpoint,after,max_bytes", [
    (failpoints.CONSOLIDATION_READ, 1, 1 << 20),  # rows read, nothing merged
    (failpoints.CONSOLIDATION_READ, 3, 200),  # mid-source: earlier batches merged, the txn one version behind
    (failpoints.CONSOLIDATION_MERGE, 2, 1 << 20),  # a data file written to the target, not committed
    (failpoints.CONSOLIDATION_COMMITTED, 2, 1 << 20),  # committed, status row not written
])
def test_sigkill_at_each_step_then_a_rerun_leaves_no_duplicate_and_no_gap(azurite, request, failpoint, after,
                                                                          max_bytes):
    # max_merge_bytes 200: every file is its own batch, so one commit spans several merges.
    regions = Regions(azurite, request.node.name, overrides={"max_merge_bytes": max_bytes})
    try:
        expected = write_backlog(regions, repeat=max_bytes < 1000)
        job = {"config": regions.config_doc, "environ": regions.environ, "status_table": regions.status_table,
               "failpoint": failpoint, "after": after}
        proc = subprocess.run([sys.executable, "-m", "tests.support.consolidation_worker"], cwd=REPO,
                              input=json.dumps(job), capture_output=True, text=True, timeout=300)
        assert proc.returncode == -9, proc.stderr[-2000:]
        # The dead run's lease would expire within LEASE_SECONDS; break it rather than wait.
        locks = BlobServiceClient.from_connection_string(regions.environ["AzureWebJobsStorage"])
        BlobLeaseClient(locks.get_blob_client(LOCKS_CONTAINER, f"consolidations/{regions.name}")).break_lease(0)
        locks.close()
        rerun = regions.run()
        assert all(o.status == "up_to_date" for o in rerun.values()), {s: o.error for s, o in rerun.items()}
        assert_exactly_once(regions, expected)
        assert all(o.target_commits == 0 for o in regions.run().values())
    finally:
        regions.close()


def test_two_runs_started_at_once_merge_every_row_once(azurite, request):
    regions = Regions(azurite, request.node.name)
    other = ReplicationRuntime(parse_config(regions.config_doc), regions.environ)
    try:
        expected = write_backlog(regions, repeat=False)
        barrier = threading.Barrier(2)
        results, errors = [], []

        def run(runtime):
            barrier.wait()
            try:
                results.append(run_consolidation(runtime, runtime.config.consolidations[0], regions.status, None))
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(err)

        threads = [threading.Thread(target=run, args=(rt,)) for rt in (regions.runtime, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and len(results) == 2
        inserted = sum(o.rows_inserted for outcomes in results for o in outcomes)
        assert inserted == len(expected)
        assert_exactly_once(regions, expected)
    finally:
        other.close()
        regions.close()


def test_concurrent_writers_to_the_global_table_are_retried_without_duplicates(azurite, request):
    regions = Regions(azurite, request.node.name)
    try:
        consolidation = regions.consolidation
        settings = regions.runtime.settings["GLOBAL_STORAGE"]
        rows = orders("eastus", range(50)).append_column("source_region", __import__("pyarrow").array(["x"] * 50))
        regions.clients["global"].create_container(regions.container)
        targets = [TargetTable(deltalake_uri(consolidation.target), deltalake_options(settings),
                               keys=consolidation.keys, on_match="ignore", partition_by=(), label="global")
                   for _ in range(3)]
        targets[0].merge(rows.slice(0, 0), app_id="seed", version=0, advances=True)
        barrier = threading.Barrier(3)
        results = []

        def merge(i):
            barrier.wait()
            results.append(targets[i].merge(rows, app_id=f"w{i}", version=i + 1, advances=True))

        threads = [threading.Thread(target=merge, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(r.inserted for r in results) == 50 and max(r.attempts for r in results) > 1
        table = regions.target()
        assert table.to_pyarrow_table().num_rows == 50
        assert [table.transaction_version(f"w{i}") for i in range(3)] == [1, 2, 3]
    finally:
        regions.close()


def test_a_stopped_region_is_recorded_and_alerted_once_then_its_backlog_merges_once(azurite, second_azurite, request,
                                                                                     monkeypatch):
    regions = Regions(azurite, request.node.name, processes={"seasia": second_azurite})
    with AlertSink() as sink:
        monkeypatch.setenv("ALERT_TOPIC_ENDPOINT", sink.endpoint)
        monkeypatch.setenv("ALERT_TOPIC_KEY", "test-key")
        alerts = ReplicationRuntime(parse_config(regions.config_doc), dict(regions.environ, ALERT_TOPIC_ENDPOINT=sink.endpoint,
                                    ALERT_TOPIC_KEY="test-key")).alert_publisher()
        try:
            expected = write_backlog(regions, repeat=False)
            second_azurite.stop()
            for _ in range(2):
                outcomes = regions.run(alerts=alerts)
                assert outcomes["seasia"].status == "unreachable" and outcomes["seasia"].error
                assert outcomes["eastus"].status == outcomes["westeu"].status == "up_to_date"
            assert sink.types() == ["DeltaReplication.ConsolidationSourceUnreachable"]
            assert sink.events[0]["data"]["source"] == "seasia"
            row = {r.source: r for r in regions.status.list_rows(consolidation=regions.name)}["seasia"]
            assert row.status == "unreachable" and "seasia" in row.last_error
            assert {k for k in regions.global_keys() if k[0] == "seasia"} == set()
            second_azurite.start()
            outcomes = regions.run(alerts=alerts)
            assert outcomes["seasia"].status == "up_to_date" and outcomes["seasia"].rows_inserted == 18
            assert sink.types() == ["DeltaReplication.ConsolidationSourceUnreachable",
                                    "DeltaReplication.ConsolidationSourceRecovered"]
            assert_exactly_once(regions, expected)
        finally:
            if not second_azurite.running:
                second_azurite.start()
            regions.close()
