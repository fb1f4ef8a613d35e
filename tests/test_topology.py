"""The ReplicationTopology record: defaults, ETag-guarded flips, concurrent promotes, bad input,
tagged replica writes and the quarantine staying outside retention's reach."""

from __future__ import annotations

import threading

import pytest

from shared import failpoints
from shared.config.parse import parse_config
from shared.errors import PromotionRefused, TopologyConflict
from shared.failover.promote import PROMOTE_FLIPPING, promote
from shared.failover.rejoin import quarantine_root
from shared.maintenance.retention import apply_replica_retention
from shared.runtime import ReplicationRuntime
from shared.storage.clients import CLIENT_REQUEST_ID_PREFIX
from tests.support.failover import deliver_new, events_of, failover_lake, write_to
from tests.support.lake import batch


@pytest.fixture
def flake(azurite, request):
    lake = failover_lake(azurite, request.node.name)
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.write(batch(5, 5), partition_by=["region"])
    deliver_new(lake, "eastus", set())
    yield lake
    failpoints.disarm_all()
    lake.close()


def test_without_a_row_the_configured_source_is_primary_at_epoch_zero(flake):
    topology = flake.runtime.topology(flake.table_name)
    assert (topology.primary, topology.epoch, topology.etag) == ("eastus", 0, None)
    assert flake.runtime.replicator(flake.table_name).replicas.keys() == {"westeu", "seasia"}


def test_a_flip_from_a_stale_read_is_refused(flake):
    store = flake.runtime.topology_store()
    stale = flake.runtime.topology(flake.table_name)
    won = store.flip(stale, "westeu", 1)
    assert (won.primary, won.epoch, won.previous_primary) == ("westeu", 1, "eastus")
    with pytest.raises(TopologyConflict, match="lost a race"):
        store.flip(stale, "seasia", 1)
    again = flake.runtime.topology(flake.table_name)
    with pytest.raises(TopologyConflict):
        store.flip(stale, "seasia", 1)
    assert flake.runtime.topology(flake.table_name) == again
    # A flip from the current row succeeds (epoch 2) and the replicator follows it.
    second = store.flip(again, "seasia", 1)
    assert second.epoch == 2
    assert flake.runtime.replicator(flake.table_name).replicas.keys() == {"eastus", "westeu"}


def test_two_concurrent_promotes_exactly_one_wins(flake):
    barrier = threading.Barrier(2, timeout=30)
    failpoints.arm_each(PROMOTE_FLIPPING, barrier.wait)  # both have read epoch 0 before either flips
    # Each operator runs their own process: separate runtimes, the same topology table.
    runtimes = [ReplicationRuntime(parse_config(flake.config_doc), flake.environ) for _ in range(2)]
    outcomes: dict[str, object] = {}

    def run(runtime, to):
        try:
            outcomes[to] = promote(runtime, flake.table_name, to, force=True)
        except TopologyConflict as err:
            outcomes[to] = err

    threads = [threading.Thread(target=run, args=(r, to)) for r, to in zip(runtimes, ("westeu", "seasia"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in runtimes:
        r.close()
    winners = [to for to, o in outcomes.items() if not isinstance(o, Exception)]
    losers = [o for o in outcomes.values() if isinstance(o, TopologyConflict)]
    assert len(winners) == 1 and len(losers) == 1
    assert "another promote won" in str(losers[0]) and "Nothing was changed" in str(losers[0])
    topology = flake.runtime.topology(flake.table_name)
    assert (topology.primary, topology.epoch) == (winners[0], 1)


@pytest.mark.parametrize("to, message", [("nowhere", "has no location 'nowhere'"),
                                         ("eastus", "already the primary")])
def test_promote_to_a_bad_location_says_why_and_changes_nothing(flake, to, message):
    with pytest.raises(PromotionRefused, match=message):
        promote(flake.runtime, flake.table_name, to, force=True)
    assert flake.runtime.topology(flake.table_name).epoch == 0


def test_planned_promote_refuses_when_the_location_cannot_catch_up_in_time(flake):
    flake.write(batch(10, 5), partition_by=["region"])  # westeu lacks it; no time to copy
    with pytest.raises(PromotionRefused, match="after waiting 0s; stop the writers"):
        promote(flake.runtime, flake.table_name, "westeu", timeout=0)
    assert flake.runtime.topology(flake.table_name).epoch == 0


class HeaderLog:
    def __init__(self) -> None:
        self.writes: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, request) -> None:
        http = request.http_request
        if http.method == "PUT":
            with self._lock:
                self.writes.append((http.url.split("?")[0], http.headers.get("x-ms-client-request-id", "")))


def test_replica_writes_carry_the_tagged_client_request_id(flake):
    log = HeaderLog()
    runtime = ReplicationRuntime(parse_config(flake.config_doc), flake.environ, counter=log)
    try:
        flake.write(batch(10, 5), partition_by=["region"])
        runtime.replicator(flake.table_name).replicate(None)
    finally:
        runtime.close()
    commit_puts = [w for w in log.writes if w[0].endswith(f"_delta_log/{2:020d}.json")]
    assert len(commit_puts) == 2  # one per replica
    assert log.writes and all(rid.startswith(CLIENT_REQUEST_ID_PREFIX) for _, rid in log.writes)


def test_retention_never_lists_or_deletes_the_quarantine(flake):
    table = flake.runtime.config.table(flake.table_name)
    westeu = table.location("westeu")
    root = quarantine_root(westeu, 1)
    assert not root.startswith(westeu.path + "/")  # outside the table root
    blob = flake.clients["westeu"].get_blob_client(flake.container, f"{root}/_delta_log/{9:020d}.json")
    blob.upload_blob(b"{}\n")
    orphan = flake.clients["westeu"].get_blob_client(flake.container, f"{root}/region=x/part-old.parquet")
    orphan.upload_blob(b"x" * 10)
    replicator = flake.runtime.replicator(flake.table_name)
    assert not any("_quarantine" in e.name for e in replicator.replicas["westeu"].list_files())
    apply_replica_retention(replicator, "westeu")
    assert blob.exists() and orphan.exists()


def test_planned_promote_measures_a_commit_that_landed_before_the_flip_and_fences_above_it(flake):
    """A writer commits on eastus between the head check and the flip: the promote fences eastus
    above that commit and reports it (measured, not a constant)."""
    failpoints.arm(PROMOTE_FLIPPING, after=1, action=lambda: flake.write(batch(700, 5), partition_by=["region"]))
    result = promote(flake.runtime, flake.table_name, "westeu", timeout=30)
    assert (result.topology.promoted_at_version, result.old_primary_ahead) == (1, 1)
    assert result.as_json()["oldPrimaryVersionsBeyondPromotion"] == 1
    assert (result.fence_version, result.old_primary_head) == (3, 3)
    assert flake.head("eastus") == 3 and flake.head("westeu") == 1


def _flip_elsewhere(lake, *primaries: str) -> None:
    """Promotes made by another operator's process (its own runtime); this one has not read them."""
    other = ReplicationRuntime(parse_config(lake.config_doc), lake.environ)
    try:
        for primary in primaries:
            other.topology_store().flip(other.topology(lake.table_name), primary, lake.head("westeu"))
    finally:
        other.close()


def test_an_event_routed_by_a_remembered_topology_a_promote_ended_is_fenced(flake):
    """Routing trusts this process's last fresh read when it names the event's location; a promote made
    elsewhere since then ends that epoch: the write fence refuses the commit, as for an invocation
    that raced the promote, and nothing of it reaches any replica."""
    from shared.app.commit_event import EventDisposition
    from shared.errors import WriteFenced
    from shared.replication.outcome import ReplicaState

    runtime = flake.runtime
    remembered = runtime.remembered_topology(flake.table_name, "eastus")
    assert (remembered.primary, remembered.epoch) == ("eastus", 0)  # the fence's last fresh read
    assert runtime.remembered_topology(flake.table_name, "westeu") is None  # never trusted for another location
    _flip_elsewhere(flake, "westeu")
    heads = {name: flake.head(name) for name in ("westeu", "seasia")}
    assert heads == {"westeu": 1, "seasia": 1}
    write_to(flake, "eastus", batch(900, 5), partition_by=["region"])  # a writer still on the deposed primary
    (event,) = [e for e in events_of(flake, "eastus") if e["subject"].endswith(f"{2:020d}.json")]
    result = flake.deliver(event)
    assert (result.disposition, result.version) == (EventDisposition.HANDLED, 2)
    assert sorted((o.replica, o.state, type(o.error)) for o in result.outcomes) == [
        ("seasia", ReplicaState.ERROR, WriteFenced), ("westeu", ReplicaState.ERROR, WriteFenced)]
    assert result.retryable_failures == []
    assert {name: flake.head(name) for name in ("westeu", "seasia")} == heads
    assert runtime.remembered_topology(flake.table_name, "eastus") is None
    assert runtime.remembered_topology(flake.table_name, "westeu").epoch == 1
    # The next event from eastus is routed by a fresh read: fenced before anything is read or copied.
    result = flake.deliver(event)
    assert result.disposition == EventDisposition.FENCED
    assert "is not the primary (westeu) at epoch 1" in result.reason


def test_an_event_whose_location_is_primary_again_at_a_later_epoch_is_handled_again_from_a_fresh_read(flake):
    """Remembered eastus at epoch 0; elsewhere westeu was promoted and then eastus again (epoch 2). The
    fence refuses epoch 0's writes; the event is handled again at epoch 2 and replicated."""
    from shared.app.commit_event import EventDisposition
    from shared.replication.outcome import ReplicaState

    assert flake.runtime.remembered_topology(flake.table_name, "eastus").epoch == 0
    _flip_elsewhere(flake, "westeu", "eastus")
    flake.write(batch(900, 5), partition_by=["region"])
    (event,) = [e for e in events_of(flake, "eastus") if e["subject"].endswith(f"{2:020d}.json")]
    fence_reads = flake.runtime.replicators[flake.table_name].fence.reads
    result = flake.deliver(event)
    assert (result.disposition, result.version) == (EventDisposition.HANDLED, 2)
    assert sorted((o.replica, o.state, o.head_after) for o in result.outcomes) == [
        ("seasia", ReplicaState.REPLICATED, 2), ("westeu", ReplicaState.REPLICATED, 2)]
    assert flake.runtime.replicators[flake.table_name].fence.reads - fence_reads == 4  # refused twice, then passed
    assert flake.runtime.remembered_topology(flake.table_name, "eastus").epoch == 2
    flake.assert_replicas_equal()
