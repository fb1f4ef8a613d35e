"""The writer fence on a deposed primary: the protocol it writes, deltalake refusing to commit
while reading on, and fence_deposed fencing a forced promote's old primary once it answers."""

from __future__ import annotations

import pytest
from deltalake.exceptions import CommitFailedError

from devtools.azurite import AzuriteProcess
from shared.failover.fence import FENCE_FEATURE, fence_deposed, fence_location, fenced_protocol
from shared.failover.promote import promote
from tests.support.failover import deliver_new, failover_lake
from tests.support.lake import batch, rows


@pytest.mark.parametrize("protocol, expected", [
    ({"minReaderVersion": 1, "minWriterVersion": 2},
     {"minReaderVersion": 1, "minWriterVersion": 7, "writerFeatures": ["appendOnly", "invariants", FENCE_FEATURE]}),
    ({"minReaderVersion": 1, "minWriterVersion": 4},
     {"minReaderVersion": 1, "minWriterVersion": 7,
      "writerFeatures": ["appendOnly", "invariants", "checkConstraints", "changeDataFeed", "generatedColumns",
                         FENCE_FEATURE]}),
    ({"minReaderVersion": 2, "minWriterVersion": 6},
     {"minReaderVersion": 2, "minWriterVersion": 7,
      "writerFeatures": ["appendOnly", "invariants", "checkConstraints", "changeDataFeed", "generatedColumns",
                         "columnMapping", "identityColumns", FENCE_FEATURE]}),
    ({"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": ["deletionVectors"],
      "writerFeatures": ["deletionVectors", "changeDataFeed"]},
     {"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": ["deletionVectors"],
      "writerFeatures": ["deletionVectors", "changeDataFeed", FENCE_FEATURE]}),
])
def test_the_fenced_protocol_keeps_every_implied_writer_feature_and_the_reader_side(protocol, expected):
    assert fenced_protocol(protocol) == expected
    assert fenced_protocol(expected) == expected  # fencing twice changes nothing


def test_a_fenced_change_data_feed_table_reads_on_and_refuses_writes(azurite, request):
    lake = failover_lake(azurite, request.node.name)
    try:
        lake.write(batch(0, 10), mode="overwrite", partition_by=["region"],
                   configuration={"delta.enableChangeDataFeed": "true"})  # protocol (1, 4)
        lake.write(batch(10, 5), partition_by=["region"])
        before = rows(lake.table().to_pyarrow_table())
        table = lake.runtime.config.table(lake.table_name)
        store = lake.runtime.stores.table(table.source)
        fence = fence_location(store, location="eastus", epoch=1, primary="westeu")
        assert (fence.version, fence.placed) == (2, True)
        assert fence_location(store, location="eastus", epoch=1, primary="westeu") == \
            type(fence)("eastus", 2, placed=False)
        fenced = lake.table()
        assert fenced.version() == 2 and rows(fenced.to_pyarrow_table()) == before
        assert fenced.protocol().min_reader_version == 1 and fenced.protocol().reader_features is None
        assert fenced.protocol().writer_features == ["appendOnly", "invariants", "checkConstraints", "changeDataFeed",
                                                     "generatedColumns", FENCE_FEATURE]
        with pytest.raises(CommitFailedError, match="delta-replication-fenced"):
            lake.write(batch(100, 5), partition_by=["region"])
        assert lake.head("eastus") == 2
    finally:
        lake.close()


def test_a_forced_promotes_old_primary_is_fenced_as_soon_as_it_answers(azurite, request):
    primary = AzuriteProcess(("eastus",)).start()
    lake = failover_lake(azurite, request.node.name, primary_process=primary)
    name = lake.table_name
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        lake.write(batch(5, 5), partition_by=["region"])
        deliver_new(lake, "eastus", set())
        lake.write(batch(9000, 5), partition_by=["region"])  # v2: never reached westeu
        primary.stop()
        result = promote(lake.runtime, name, "westeu", force=True)
        assert (result.old_primary_ahead, result.fence_version) == ("unknown", None)
        assert fence_deposed(lake.runtime, name) == []  # eastus does not answer: tried again later
        primary.start()
        fences = fence_deposed(lake.runtime, name)
        assert [(f.location, f.version, f.placed) for f in fences] == [("eastus", 3, True)]
        assert [(f.version, f.placed) for f in fence_deposed(lake.runtime, name)] == [(3, False)]
        with pytest.raises(CommitFailedError, match="delta-replication-fenced"):
            lake.write(batch(9100, 5), partition_by=["region"])
    finally:
        if not primary.running:
            primary.start()
        lake.close()
        primary.close()


def test_the_lag_check_fences_an_old_primary_that_answers_and_never_one_that_rejoined(azurite, request):
    """The lag timer is what meets a forced promote's old primary first. Once that location has
    rejoined (fence quarantined, head exactly the promotion version, nothing new on the primary),
    it is a replica: the next lag check neither fences it again nor reports it diverged."""
    from shared.failover.rejoin import rejoin
    from shared.app.lag_check import check_replication

    primary = AzuriteProcess(("eastus",)).start()
    lake = failover_lake(azurite, request.node.name, primary_process=primary)
    name = lake.table_name
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        lake.write(batch(5, 5), partition_by=["region"])
        deliver_new(lake, "eastus", set())  # westeu and seasia at v1
        primary.stop()
        assert promote(lake.runtime, name, "westeu", force=True).fence_version is None
        primary.start()
        status = lake.runtime.status_store()
        check_replication(lake.runtime, status, None)
        assert lake.head("eastus") == 2, "the lag check did not fence the old primary that answers again"
        with pytest.raises(CommitFailedError, match="delta-replication-fenced"):
            lake.write(batch(9100, 5), partition_by=["region"])
        assert {r.replica: r.status for r in status.list_rows(table=name)}["eastus"] == "diverged"
        result = rejoin(lake.runtime, name, "eastus")
        assert (result.versions, result.fences, result.head_after) == ([2], [2], 1)
        check_replication(lake.runtime, status, None)
        check_replication(lake.runtime, status, None)
        assert lake.head("eastus") == 1, "a rejoined old primary at the promotion version was fenced again"
        assert {r.replica: r.status for r in status.list_rows(table=name)}["eastus"] == "healthy"
    finally:
        if not primary.running:
            primary.start()
        lake.close()
        primary.close()


def test_the_write_fence_refuses_a_new_epoch_under_the_same_primary_and_any_other_primary_when_the_epoch_is_unknown(
        azurite, request):
    """The write-time fence (shared/replication/fence.py) checks the primary OR the epoch: after eastus ->
    westeu -> eastus, eastus is the primary again at epoch 2, and a write replicated from eastus at epoch 0
    is refused; and a write whose epoch is unknown is refused once another location is the primary."""
    from shared.errors import WriteFenced

    lake = failover_lake(azurite, request.node.name)
    name = lake.table_name
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        deliver_new(lake, "eastus", set())
        fence = lake.runtime.replicators[name].fence  # replicates from the configured source, eastus
        fence.check(0, replica="westeu", what="commit 1")  # epoch 0, eastus: goes ahead
        promote(lake.runtime, name, "westeu", force=True)
        with pytest.raises(WriteFenced) as unknown_epoch:
            fence.check(None, replica="seasia", what="commit 1")
        assert (f"table {name}: commit 1 to seasia was not written: it was replicated from eastus, but the primary "
                "is now westeu (epoch 1)") in str(unknown_epoch.value)
        promote(lake.runtime, name, "eastus", force=True)
        assert (lake.runtime.topology(name).primary, lake.runtime.topology(name).epoch) == ("eastus", 2)
        with pytest.raises(WriteFenced, match=r"replicated from eastus at epoch 0, but the primary is now eastus "
                                              r"\(epoch 2\)"):
            fence.check(0, replica="westeu", what="commit 1")
        fence.check(2, replica="westeu", what="commit 1")  # the current epoch: goes ahead
    finally:
        lake.close()


def test_a_late_read_of_an_earlier_epoch_does_not_bring_a_deposed_primary_back_into_routing():
    """A topology read that started before a promote and finished after a newer read: routing keeps the
    newer epoch (the fence would still refuse the old one's commits, but its files could be copied)."""
    from shared.failover.topology import Topology
    from shared.replication.fence import RememberedTopologies

    remembered = RememberedTopologies()
    remembered.put("sales", Topology("sales", "westeu", 1))
    remembered.put("sales", Topology("sales", "eastus", 0))  # the late answer
    assert remembered.routing("sales", "eastus") is None
    assert remembered.routing("sales", "westeu") == Topology("sales", "westeu", 1)
    remembered.forget("sales")  # a refused epoch: the next fresh read is remembered whatever its epoch
    remembered.put("sales", Topology("sales", "eastus", 0))
    assert remembered.routing("sales", "eastus") == Topology("sales", "eastus", 0)


def test_remembered_topologies_are_bounded_least_recently_read_out(monkeypatch):
    from shared.failover.topology import Topology
    from shared.replication import fence

    monkeypatch.setattr(fence, "REMEMBERED_TABLES", 3)
    remembered = fence.RememberedTopologies()
    for name in ("a", "b", "c"):
        remembered.put(name, Topology(name, "eastus", 0))
    remembered.put("a", Topology("a", "eastus", 0))  # read again: the most recent now
    remembered.put("d", Topology("d", "eastus", 0))
    assert [n for n in "abcd" if remembered.routing(n, "eastus") is not None] == ["a", "c", "d"]


def test_what_this_process_wrote_to_a_replica_is_not_trusted_into_another_epoch(azurite, request):
    """The steady state skips reading the replica's previous commit when this process wrote it there
    (replicator.py, `_written`); but only at the epoch it was written: after eastus -> westeu -> eastus the
    replica's head is read again (while westeu was the primary its log was not this process's to know)."""
    from shared.config.parse import parse_config
    from shared.replication.outcome import ReplicaState
    from shared.runtime import ReplicationRuntime
    from tests.test_hot_path import GatedRequests

    lake = failover_lake(azurite, request.node.name)
    name = lake.table_name
    prefix = f"{azurite.endpoint('seasia')}/{lake.container}/{lake.table_path}/_delta_log/"
    recorder = GatedRequests(prefix, "none")
    lake._runtime = ReplicationRuntime(parse_config(lake.config_doc), lake.environ, counter=recorder)
    seen: set = set()
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        lake.write(batch(100, 5))
        deliver_new(lake, "eastus", seen)
        lake.write(batch(200, 5))
        recorder.requests.clear()
        deliver_new(lake, "eastus", seen)
        assert [m for m, _ in recorder.on_replica()] == ["PUT"]  # commit 2 alone: 1 was written at epoch 0
        promote(lake.runtime, name, "westeu", force=True)
        promote(lake.runtime, name, "eastus", force=True)
        assert lake.runtime.topology(name).epoch == 2
        lake.write(batch(300, 5))
        recorder.requests.clear()
        (result,) = deliver_new(lake, "eastus", seen)
        # westeu holds the fence the second promote placed on it (version 3) until it rejoins.
        assert [(o.replica, o.state) for o in result.outcomes] == [
            ("westeu", ReplicaState.DIVERGED), ("seasia", ReplicaState.REPLICATED)]
        probe = "GET" if lake.runtime.storage_client == "obstore" else "HEAD"
        assert sorted(recorder.on_replica()) == [(probe, f"{2:020d}.json"), ("PUT", f"{3:020d}.json")]
    finally:
        lake.close()


def test_a_remembered_topology_routes_only_while_fresh(monkeypatch):
    """Past ROUTING_TRUST_SECONDS a remembered read routes nothing (the next event reads afresh), and a read
    of an earlier epoch may replace it (a table re-created from scratch is not held to a dead epoch)."""
    from shared.failover.topology import Topology
    from shared.replication import fence

    remembered = fence.RememberedTopologies()
    remembered.put("sales", Topology("sales", "westeu", 1))
    assert remembered.routing("sales", "westeu") == Topology("sales", "westeu", 1)
    monkeypatch.setattr(fence, "ROUTING_TRUST_SECONDS", -1.0)  # every entry is now older than trusted
    assert remembered.routing("sales", "westeu") is None
    remembered.put("sales", Topology("sales", "eastus", 0))
    monkeypatch.setattr(fence, "ROUTING_TRUST_SECONDS", 30.0)
    assert remembered.routing("sales", "eastus") == Topology("sales", "eastus", 0)
    assert remembered.routing("sales", "westeu") is None
