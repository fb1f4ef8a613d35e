"""Concurrent events of one table in one process: each version waits for the lower ones in
flight, so each finds its predecessor written and takes the one-version path (no lease)."""

from __future__ import annotations

import threading
import time

import pytest
from azure.storage.blob import BlobServiceClient

from shared import failpoints
from shared.replication.outcome import ReplicaState
from shared.storage.lease import LOCKS_CONTAINER, location_lease_name
from tests.support.lake import batch


def _wait_for(predicate, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_concurrent_events_of_one_table_take_the_fast_path_in_version_order(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.deliver_all(lake.events())
    for i in range(1, 6):
        lake.write(batch(i * 10, 5), partition_by=["region"])
    events = {int(e["subject"].rsplit("/", 1)[1].split(".")[0]): e
              for e in lake.events(start_after=f"{lake.table_path}/_delta_log/{0:020d}.json")}
    assert sorted(events) == [1, 2, 3, 4, 5]
    replicator = lake.runtime.replicator("sales")
    westeu = replicator.replicas["westeu"]
    sequencer = lake.runtime._sequencer
    # Seeding version 0 took westeu's lease (and so created its blob); start from none.
    host = BlobServiceClient.from_connection_string(lake.environ["AzureWebJobsStorage"])
    lease_blob = host.get_blob_client(LOCKS_CONTAINER, location_lease_name(*westeu.location_key))
    lease_blob.delete_blob()

    # Version 1 stops just before its westeu commit write, holding its turn, until released.
    release = threading.Event()
    failpoints.arm(failpoints.COMMIT_BEFORE, after=1, action=lambda: release.wait(30), where={"replica": "westeu"})
    results: dict[int, object] = {}
    threads = []
    try:
        for v in sorted(events):
            thread = threading.Thread(target=lambda v=v: results.__setitem__(v, lake.deliver(events[v])))
            thread.start()
            threads.append(thread)
            # The next event starts only once this one holds or awaits its turn for westeu.
            _wait_for(lambda n=len(threads): sequencer.waiting(westeu.location_key) == n, f"version {v}'s turn")
        release.set()
        for thread in threads:
            thread.join(60)
    finally:
        release.set()
        failpoints.disarm_all()

    for replica in ("westeu", "seasia"):
        outcomes = [next(o for o in results[v].outcomes if o.replica == replica) for v in sorted(events)]
        assert [o.state for o in outcomes] == [ReplicaState.REPLICATED] * 5, replica
        # Each found its predecessor already written: the one-version path, never a catch-up.
        assert [(o.head_before, o.head_after) for o in outcomes] == [(v - 1, v) for v in range(1, 6)], replica
    assert sequencer.waiting(westeu.location_key) == 0
    lake.assert_replicas_equal()
    # No lease was taken for westeu (taking one creates its blob): the one-version path needs none.
    assert not lease_blob.exists()


@pytest.mark.parametrize("client", ["obstore", "sdk"])
def test_the_steady_state_reads_no_previous_commit_on_the_replicas_or_the_primary(lake, client):
    """Per commit and replica: the file's GET and PUT, the topology read of the write fence, the commit's
    PUT; routing reads no topology (the fence's last read names this primary). Version N-1 is not asked
    for on the replica (this process wrote it there at this epoch) nor on the primary (this process read
    it at this epoch). The first commit of a process asks the replica (test_hot_path.py)."""
    from shared.config.parse import parse_config
    from shared.app.commit_event import handle_storage_event
    from shared.runtime import ReplicationRuntime
    from tests.scenarios.test_data_safety import RequestAudit

    lake.write(batch(0, 5), mode="overwrite")
    audit = RequestAudit()
    runtime = ReplicationRuntime(parse_config(lake.config_doc), {**lake.environ, "STORAGE_CLIENT": client},
                                 counter=audit)
    try:
        assert [r.disposition.value for r in (handle_storage_event(runtime, e) for e in lake.events())] == ["handled"]
        for i in range(1, 5):
            lake.write(batch(i * 10, 5))
            (event,) = [e for e in lake.events() if e["subject"].endswith(f"{i:020d}.json")]
            del audit.requests[:]
            fence_reads = runtime.replicators["sales"].fence.reads
            (outcome_states,) = [[o.state for o in handle_storage_event(runtime, event).outcomes]]
            assert outcome_states == [ReplicaState.REPLICATED] * 2
            # Plus one topology point read per replica right before its commit PUT (the write fence).
            assert runtime.replicators["sales"].fence.reads - fence_reads == 2
            # And no other: the event was routed by the fence's last fresh read (the same primary).
            topology = [m for m, a, p, *_ in audit.requests if p.startswith("ReplicationTopology(")]
            assert topology == ["GET", "GET"], i
            log = f"{lake.table_path}/_delta_log/"
            seen = sorted((method, account, path.split("/", 1)[1].removeprefix(log))
                          for method, account, path, *_ in audit.requests
                          if "/_delta_log/" in path)
            expected = [("GET", "eastus", f"{i:020d}.json")]  # version i-1 was read here before
            for replica in ("seasia", "westeu"):
                expected += [("PUT", replica, f"{i:020d}.json")]
            assert seen == sorted(expected), i
            data = [(m, a) for m, a, p, *_ in audit.requests if "/_delta_log/" not in p and p.endswith(".parquet")]
            assert sorted(data) == sorted([("GET", "eastus")] * 2 + [("PUT", "westeu"), ("PUT", "seasia")]), i
    finally:
        runtime.close()
    lake.assert_replicas_equal()


def test_remembered_primary_digests_hold_only_within_their_epoch(lake):
    import hashlib

    lake.write(batch(0, 5), mode="overwrite")
    lake.write(batch(10, 5))
    replicator = lake.runtime.replicators["sales"]
    data = replicator.source_log().at_epoch(3).commit_bytes(1)  # read at epoch 3: remembered
    remembered = replicator.source_log().at_epoch(3).commit_entry(1)
    assert (remembered.size, remembered.content_md5, remembered.last_modified) == (
        len(data), hashlib.md5(data).digest(), None)  # from memory: no request, no blob properties
    for source in (replicator.source_log().at_epoch(4), replicator.source_log()):
        asked = source.commit_entry(1)  # another epoch, or none known: the primary is asked (a HEAD)
        assert asked.size == len(data) and asked.last_modified is not None


def test_a_late_duplicate_whose_files_the_primary_vacuumed_is_up_to_date_not_an_error(lake):
    """The one-version path asks only for N-1; a late duplicate of N whose files are gone from
    the primary must still be recognised as there (and compared), not retried for hours."""
    import json

    lake.write(batch(0, 5), mode="overwrite")
    lake.write(batch(10, 5), mode="overwrite")
    lake.write(batch(20, 5), mode="overwrite")
    events = lake.events()
    lake.deliver_all(events)
    container = lake.clients["eastus"].get_container_client(lake.container)
    commit = container.download_blob(f"{lake.table_path}/_delta_log/{1:020d}.json").readall().decode()
    added = [json.loads(line)["add"]["path"] for line in commit.splitlines() if '"add"' in line]
    assert added
    for path in added:  # as a VACUUM would, on the primary only
        container.delete_blob(f"{lake.table_path}/{path}")
    (late,) = [e for e in events if e["subject"].endswith(f"{1:020d}.json")]
    result = lake.deliver(late)
    assert [(o.replica, o.state, o.error) for o in result.outcomes] == [
        ("westeu", ReplicaState.UP_TO_DATE, None), ("seasia", ReplicaState.UP_TO_DATE, None)]
    lake.assert_replicas_equal(every_version=False)
