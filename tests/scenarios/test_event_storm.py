"""Event storms: duplicated, reordered and dropped events from 8 concurrent workers converge
without multiplying the work."""

from __future__ import annotations

import copy
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
from deltalake import write_deltalake

from shared.config.parse import parse_config
from shared.app.commit_event import handle_storage_event
from shared.runtime import ReplicationRuntime
from shared.storage.clients import RequestCounter
from tests.support.lake import Lake, batch, rows

COMMITS = 200


def storm(events: list[dict], seed: int) -> list[dict]:
    """Each event delivered 1-3 times, 30% of the distinct events lost, all shuffled."""
    rng = random.Random(seed)
    kept = [e for e in events if rng.random() >= 0.30]
    delivered = [e for e in kept for _ in range(rng.randint(1, 3))]
    rng.shuffle(delivered)
    return delivered


def replicate_storm(lake: Lake, replica_container: str, deliveries: list[dict], workers: int) -> tuple[int, list]:
    doc = copy.deepcopy(lake.config_doc)
    for replica in doc["tables"][0]["replicas"]:
        replica["container"] = replica_container
    counter = RequestCounter()
    runtime = ReplicationRuntime(parse_config(doc), lake.environ, counter=counter)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda e: handle_storage_event(runtime, e), deliveries))
        errors = [o.error for r in results for o in r.outcomes if o.error is not None]
        # The catch-up path (what the lag timer runs) covers the lost events.
        catch_up = runtime.replicators["sales"].replicate(None)
        errors += [o.error for o in catch_up if o.error is not None]
        return counter.count, errors
    finally:
        runtime.close()


@pytest.fixture(scope="module")
def storm_lake(azurite):
    lake = Lake(azurite, "storm")
    lake.write(batch(0, 4), mode="overwrite", partition_by=["region"],
               configuration={"delta.checkpointInterval": "25"})
    for i in range(1, COMMITS):
        if i % 40 == 0:
            lake.table().delete(f"id < {i}")
        else:
            write_deltalake(lake.uri(), batch(i * 4, 2), mode="append", partition_by=["region"],
                            storage_options=lake.options("eastus"))
    yield lake
    lake.close()


def test_storm_of_200_commits_with_8_workers_converges_within_1_5x_serial_requests(storm_lake):
    lake = storm_lake
    head = lake.head("eastus")
    assert head == COMMITS - 1
    deliveries = storm(lake.events(), seed=11)
    serial_requests, serial_errors = replicate_storm(lake, lake.container + "-serial", deliveries, workers=1)
    storm_requests, storm_errors = replicate_storm(lake, lake.container, deliveries, workers=8)
    assert serial_errors == []
    assert all(e.retryable for e in storm_errors), storm_errors
    lake.assert_replicas_equal(every_version=False)
    for v in random.Random(5).sample(range(head + 1), 12):
        for account in ("westeu", "seasia"):
            assert rows(lake.table(account, v).to_pyarrow_table()) == rows(lake.table("eastus", v).to_pyarrow_table())
    for account in ("westeu", "seasia"):
        assert lake.log_names(account) == [n for n in lake.log_names("eastus")]
    print(f"\nstorm: {len(deliveries)} deliveries of {len(lake.events())} log blobs ({COMMITS} commits, 2 replicas); "
          f"requests serial={serial_requests} ({serial_requests / COMMITS:.1f}/commit), "
          f"8 workers={storm_requests} ({storm_requests / COMMITS:.1f}/commit), "
          f"ratio={storm_requests / serial_requests:.2f}")
    assert storm_requests <= 1.5 * serial_requests
    for client in lake.clients.values():
        try:
            client.delete_container(lake.container + "-serial")
        except Exception:  # noqa: BLE001
            pass
