"""The write-time fence (issue 20, case 2): a promote while an invocation copies files ends its epoch,
and nothing of that epoch's lineage is written after the flip; a commit that slips through the
remaining window (after the fence's topology read, before the write lands) is found by the next
event and healed by the lag check's automatic rejoin of a location that was never a primary."""

from __future__ import annotations

import threading

from azure.data.tables import TableServiceClient

from shared import failpoints
from shared.errors import WriteFenced
from shared.failover.promote import promote
from shared.health.lag import ReplicaHealth
from shared.app.lag_check import check_replication
from shared.health.status import StatusStore
from shared.app.commit_event import EventDisposition
from shared.replication.outcome import ReplicaState
from tests.support.failover import deliver_new, events_of, failover_lake, write_to
from tests.support.lake import batch

COMMIT_3 = f"_delta_log/{3:020d}.json"


def commit_event(lake, account: str, version: int) -> dict:
    (event,) = [e for e in events_of(lake, account) if e["subject"].endswith(f"/_delta_log/{version:020d}.json")]
    return event


def at_version_2_with_eastus_v3_unreplicated(lake) -> set:
    """eastus at version 3, both replicas at 2; eastus's v3 event not delivered yet."""
    seen: set = set()
    lake.write(batch(0, 5), mode="overwrite")
    for i in (1, 2):
        lake.write(batch(i * 5, 5))
    deliver_new(lake, "eastus", seen)
    assert lake.head("westeu") == lake.head("seasia") == 2
    lake.write(batch(15, 5))  # one data file: each replica copies exactly one file for v3
    return seen


def meet_then(action) -> threading.Barrier:
    """Both replica tasks wait here; `action` runs once, while both are held."""
    return threading.Barrier(2, action=action, timeout=60)


def test_a_promote_between_the_file_copies_and_the_commit_write_fences_the_write(azurite, request):
    lake = failover_lake(azurite, request.node.name)
    name = lake.table_name
    try:
        at_version_2_with_eastus_v3_unreplicated(lake)
        promoted = []
        # Both replicas have copied v3's file; neither has written the commit. A forced promote now.
        barrier = meet_then(lambda: promoted.append(promote(lake.runtime, name, "westeu", force=True)))
        failpoints.arm_each(failpoints.FILE_COPIED, barrier.wait)
        try:
            result = lake.deliver(commit_event(lake, "eastus", 3))
        finally:
            failpoints.disarm_all()
        assert (promoted[0].topology.primary, promoted[0].topology.epoch,
                promoted[0].topology.promoted_at_version) == ("westeu", 1, 2)
        assert result.disposition == EventDisposition.HANDLED
        assert [(o.replica, o.state, type(o.error)) for o in result.outcomes] == [
            ("westeu", ReplicaState.ERROR, WriteFenced), ("seasia", ReplicaState.ERROR, WriteFenced)]
        assert result.retryable_failures == []  # acknowledged: eastus is no longer the primary
        # Nothing of epoch 0 after the flip: neither the other replica nor the new primary got eastus's v3.
        assert lake.head("seasia") == 2 and lake.head("westeu") == 2
        # The new primary's writer commits its own v3; its event brings seasia to the new lineage.
        write_to(lake, "westeu", batch(100, 5))
        result = lake.deliver(commit_event(lake, "westeu", 3))
        assert {o.replica: o.state for o in result.outcomes}["seasia"] == ReplicaState.REPLICATED
        assert lake.blob_bytes("seasia", COMMIT_3) == lake.blob_bytes("westeu", COMMIT_3) != \
            lake.blob_bytes("eastus", COMMIT_3)
    finally:
        lake.close()


def test_a_commit_that_slips_through_the_fence_window_is_found_and_rejoined(azurite, request):
    lake = failover_lake(azurite, request.node.name)
    name = lake.table_name
    status = StatusStore(TableServiceClient.from_connection_string(lake.environ["AzureWebJobsStorage"]),
                         table_name=lake.status_table)
    try:
        at_version_2_with_eastus_v3_unreplicated(lake)

        def promote_and_commit_on_westeu() -> None:
            promote(lake.runtime, name, "westeu", force=True)
            write_to(lake, "westeu", batch(100, 5))  # the new primary's writer is fast

        # Both replicas passed the fence (topology: eastus, epoch 0) and have not written yet: the window.
        failpoints.arm_each(failpoints.FENCE_CHECKED, meet_then(promote_and_commit_on_westeu).wait,
                            where={"what": "commit 3"})
        try:
            result = lake.deliver(commit_event(lake, "eastus", 3))
        finally:
            failpoints.disarm_all()
        states = {o.replica: o.state for o in result.outcomes}
        # The new primary is protected by the conditional create; seasia takes eastus's v3 (the slip).
        assert states == {"westeu": ReplicaState.DIVERGED, "seasia": ReplicaState.REPLICATED}
        assert lake.blob_bytes("seasia", COMMIT_3) == lake.blob_bytes("eastus", COMMIT_3)
        # Detected by the next event: westeu's v3 finds a different commit there.
        (next_event,) = [lake.deliver(commit_event(lake, "westeu", 3))]
        assert [(o.replica, o.state) for o in next_event.outcomes] == [
            ("eastus", ReplicaState.DIVERGED), ("seasia", ReplicaState.DIVERGED)]
        # Healed by the lag check (auto_rejoin is off): seasia was never a primary, so it is rejoined;
        # eastus (the deposed primary) is left for an operator.
        lags = {lag.replica: lag for lag in check_replication(lake.runtime, status, None)}
        assert lags["seasia"].status == ReplicaHealth.HEALTHY and lags["seasia"].replica_version == 3
        assert lake.blob_bytes("seasia", COMMIT_3) == lake.blob_bytes("westeu", COMMIT_3)
        quarantined = f"_quarantine/{lake.table_path}/epoch-1/_delta_log/{3:020d}.json"
        cc = lake.clients["seasia"].get_container_client(lake.container)
        assert cc.get_blob_client(quarantined).download_blob().readall() == lake.blob_bytes("eastus", COMMIT_3)
        assert lags["eastus"].status == ReplicaHealth.DIVERGED
        # eastus holds only the promotion marker every location gets, no quarantine: it was not rejoined.
        assert [n for n in lake.blobs("eastus") if n.startswith("_quarantine/")] == \
            [f"_quarantine/{lake.table_path}/topology/epoch-1.json"]
    finally:
        lake.close()


def test_a_promote_after_the_checkpoint_copy_fences_the_last_checkpoint_write(azurite, request):
    lake = failover_lake(azurite, request.node.name)
    name = lake.table_name
    try:
        at_version_2_with_eastus_v3_unreplicated(lake)
        lake.deliver(commit_event(lake, "eastus", 3))
        lake.table().create_checkpoint()
        (event,) = [e for e in events_of(lake, "eastus") if e["subject"].endswith("/_delta_log/_last_checkpoint")]
        # Both replicas copied the checkpoint at 3; `_last_checkpoint` not yet written. A promote now.
        barrier = meet_then(lambda: promote(lake.runtime, name, "westeu", force=True))
        failpoints.arm_each(failpoints.CHECKPOINT_COPIED, barrier.wait)
        try:
            result = lake.deliver(event)
        finally:
            failpoints.disarm_all()
        assert [(o.replica, o.state, type(o.error)) for o in result.outcomes] == [
            ("westeu", ReplicaState.ERROR, WriteFenced), ("seasia", ReplicaState.ERROR, WriteFenced)]
        assert "_last_checkpoint (version 3)" in str(result.outcomes[1].error)
        for replica in ("westeu", "seasia"):
            assert "_last_checkpoint" not in lake.log_names(replica)
    finally:
        lake.close()


def test_the_fence_window_and_cost_are_measured(lake, capsys):
    """The window left open: from the fence's topology answer to the commit write's answer, per
    commit and replica (README quotes these figures); and the event latency with and without the fence."""
    import statistics
    import time

    windows: list[float] = []
    checked: dict[str, float] = {}
    lock = threading.Lock()

    def on_checked(replica: str) -> None:
        with lock:
            checked[replica] = time.perf_counter()

    def on_written(replica: str) -> None:
        with lock:
            windows.append(time.perf_counter() - checked.pop(replica))

    lake.write(batch(0, 5), mode="overwrite")
    lake.deliver_all(lake.events())
    replicator = lake.runtime.replicators["sales"]
    fence = replicator.fence
    latency = {"fence": [], "none": []}
    try:
        for i in range(1, 41):
            lake.write(batch(i * 10, 5))
            event = commit_event(lake, "eastus", i)
            with_fence = i % 2 == 0
            replicator.fence = fence if with_fence else None
            # A failpoint holds one action: alternate which replica is measured.
            replica = ("westeu", "seasia")[(i // 2) % 2]
            failpoints.disarm_all()
            if with_fence:
                failpoints.arm_each(failpoints.FENCE_CHECKED, lambda r=replica: on_checked(r), where={"replica": replica})
                failpoints.arm_each(failpoints.COMMIT_AFTER, lambda r=replica: on_written(r), where={"replica": replica})
            started = time.perf_counter()
            result = lake.deliver(event)
            latency["fence" if with_fence else "none"].append(time.perf_counter() - started)
            assert [o.state for o in result.outcomes] == [ReplicaState.REPLICATED] * 2
    finally:
        replicator.fence = fence
        failpoints.disarm_all()
    reads = [time.perf_counter()]
    for _ in range(50):
        lake.runtime.topology("sales")
        reads.append(time.perf_counter())
    read_ms = sorted((b - a) * 1000 for a, b in zip(reads, reads[1:]))
    assert len(windows) == 20
    window_ms = sorted(w * 1000 for w in windows)
    with capsys.disabled():
        print(f"\nfence window ms: median {statistics.median(window_ms):.1f} max {window_ms[-1]:.1f}; "
              f"topology read ms: median {statistics.median(read_ms):.1f} max {read_ms[-1]:.1f}; event ms with "
              f"fence median {statistics.median(latency['fence']) * 1000:.1f}, without "
              f"{statistics.median(latency['none']) * 1000:.1f}")
    assert window_ms[-1] < 2000  # loopback: one conditional PUT of a small commit
