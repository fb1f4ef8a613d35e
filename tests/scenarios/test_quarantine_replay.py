"""Quarantines that share an epoch (the checker's seeds 9/27 and 7, issue 20): a second rejoin of one
location in one epoch gets its own place, and replay keys its bookkeeping by the quarantined commit's
content, so different commits at one version are each applied, one commit quarantined twice is
applied once, and a replay recorded by the older (epoch, version) appId is not applied again."""

from __future__ import annotations

from deltalake import write_deltalake
from deltalake.transaction import CommitProperties, Transaction

from shared.failover.promote import promote
from shared.failover.rejoin import rejoin
from shared.failover.replay import list_quarantine, replay
from tests.support.failover import deliver_new, failover_lake
from tests.support.lake import batch


def west_ids(lake) -> list[int]:
    return sorted(lake.table("westeu").to_pyarrow_table().column("id").to_pylist())


def promoted_lake(azurite, request):
    """eastus v0-v2 replicated, v3 (ids 9000-9004) written during the outage (its event never
    arrives), then westeu force-promoted at v2 (epoch 1), which fences eastus (v4)."""
    lake = failover_lake(azurite, request.node.name)
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    for i in range(1, 3):
        lake.write(batch(i * 5, 5), partition_by=["region"])
    deliver_new(lake, "eastus", set())
    lake.write(batch(9000, 5), partition_by=["region"])
    assert promote(lake.runtime, lake.table_name, "westeu", force=True).topology.promoted_at_version == 2
    return lake


def test_second_rejoin_in_one_epoch_gets_its_own_quarantine_and_both_replay(azurite, request):
    lake = promoted_lake(azurite, request)
    name = lake.table_name
    try:
        first = rejoin(lake.runtime, name, "eastus")
        assert (first.epoch, first.versions, first.fences) == (1, [3, 4], [4])
        assert first.quarantine_path.endswith(f"_quarantine/{lake.table_path}/epoch-1")
        prefix = f"_quarantine/{lake.table_path}/epoch-1/"
        kept = {n: v for n, v in lake.blobs("eastus").items() if n.startswith(prefix)}
        # The same writer again, after the rejoin removed the fence: eastus v3 once more, other bytes.
        lake.write(batch(9100, 5), partition_by=["region"])
        second = rejoin(lake.runtime, name, "eastus")
        assert (second.epoch, second.versions, second.fences) == (1, [3, 4], [4])
        assert second.quarantine_path.endswith(f"_quarantine/{lake.table_path}/epoch-1-rejoin-2")
        assert second.head_after == lake.head("westeu") == 2
        # The first quarantine is untouched (every blob, same size and MD5).
        assert {n: v for n, v in lake.blobs("eastus").items() if n.startswith(prefix)} == kept
        listed = [(c.location, c.epoch, c.version, c.rows_added, c.fence) for c in list_quarantine(lake.runtime, name)]
        assert listed == [("eastus", 1, 3, 5, False), ("eastus", 1, 4, 0, True)] * 2
        result = replay(lake.runtime, name, 1)
        assert (result.applied, result.already_applied, result.fences) == ([3, 3], [], [4, 4])
        assert len(set(result.app_ids)) == 2
        assert all(a.startswith(f"quarantine/{name}/epoch-1/") for a in result.app_ids)
        again = replay(lake.runtime, name, 1)
        assert (again.applied, again.already_applied) == ([], [3, 3])
        assert west_ids(lake) == list(range(15)) + list(range(9000, 9005)) + list(range(9100, 9105))
    finally:
        lake.close()


def copy_quarantine(lake, source: str, target: str, place: str) -> None:
    """`source`'s quarantine `place`, byte for byte, as `target`'s: the same commit quarantined in two
    locations (what a commit that slipped into a replica through the write-fence window leaves)."""
    prefix = f"_quarantine/{lake.table_path}/{place}/"
    src = lake.clients[source].get_container_client(lake.container)
    dst = lake.clients[target].get_container_client(lake.container)
    names = [n for n in lake.blobs(source) if n.startswith(prefix)]
    assert len(names) > 3
    for n in names:
        dst.upload_blob(n, src.download_blob(n).readall())


def test_one_commit_in_two_quarantines_and_a_legacy_replay_apply_nothing_twice(azurite, request):
    lake = promoted_lake(azurite, request)
    name = lake.table_name
    try:
        assert rejoin(lake.runtime, name, "eastus").versions == [3, 4]
        # A replay made before the content-keyed appIds applied it: the old appId, replayedFrom, its rows.
        write_deltalake(lake.uri(), batch(9000, 5), mode="append", partition_by=["region"],
                        storage_options=lake.options("westeu"), commit_properties=CommitProperties(
                            app_transactions=[Transaction(f"quarantine/{name}/epoch-1", 3)],
                            custom_metadata={"replayedFrom": "eastus epoch 1 version 3"}))
        lake.write(batch(9100, 5), partition_by=["region"])  # eastus v3 again (after the rejoin), other bytes
        assert rejoin(lake.runtime, name, "eastus").quarantine_path.endswith("epoch-1-rejoin-2")
        # seasia holds both commits too (eastus's first v3 and its second), quarantined under epoch 1.
        copy_quarantine(lake, "eastus", "seasia", "epoch-1")
        copy_quarantine(lake, "eastus", "seasia", "epoch-1-rejoin-2")
        listed = [(c.location, c.version, c.rows_added) for c in list_quarantine(lake.runtime, name) if not c.fence]
        assert listed == [("eastus", 3, 5)] * 2 + [("seasia", 3, 5)] * 2
        dry = replay(lake.runtime, name, 1, dry_run=True)
        assert (dry.applied, dry.already_applied) == ([3], [3, 3, 3])
        result = replay(lake.runtime, name, 1)
        # eastus's first v3 (and seasia's copy) by the legacy record; the second rejoin's v3 is another
        # commit at the same version: applied, and its seasia copy then counts as applied.
        assert (result.applied, result.already_applied) == ([3], [3, 3, 3])
        assert west_ids(lake) == list(range(15)) + list(range(9000, 9005)) + list(range(9100, 9105))
        again = replay(lake.runtime, name, 1)
        assert (again.applied, again.already_applied) == ([], [3, 3, 3, 3])
    finally:
        lake.close()
