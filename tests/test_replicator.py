"""End-to-end replication on real Azurite, tables written by deltalake."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

from deltalake import DeltaTable

from shared.replication.outcome import ReplicaState
from tests.support.lake import Lake, batch, build_rich_table, rows


def errors_of(results):
    return [o.error for r in results for o in r.outcomes if o.error is not None]


def test_rich_table_replicates_byte_identical_with_equal_rows_at_every_version(lake):
    build_rich_table(lake)
    assert lake.head("eastus") >= 20
    results = lake.deliver_all(lake.events())
    assert errors_of(results) == []
    lake.assert_replicas_equal(every_version=True)
    # Checkpoints, _last_checkpoint and change data files came along too.
    for account in ("westeu", "seasia"):
        assert [n for n in lake.log_names(account) if "checkpoint" in n] == \
            [n for n in lake.log_names("eastus") if "checkpoint" in n]
        assert lake.blob_bytes(account, "_delta_log/_last_checkpoint") == lake.blob_bytes("eastus", "_delta_log/_last_checkpoint")
        primary_cdc = {n for n in lake.blobs("eastus") if "/_change_data/" in n}
        assert primary_cdc and primary_cdc <= set(lake.blobs(account))


def test_only_files_the_log_references_are_copied(lake):
    build_rich_table(lake, appends=4)
    stray = f"{lake.table_path}/region=x/not-in-any-commit.parquet"
    lake.clients["eastus"].get_blob_client(lake.container, stray).upload_blob(b"junk")
    lake.deliver_all(lake.events())
    assert stray not in lake.blobs("westeu")
    assert lake.head("westeu") == lake.head("eastus")


def test_every_event_delivered_three_times_converges(lake):
    build_rich_table(lake, appends=6)
    events = lake.events()
    results = lake.deliver_all([e for e in events for _ in range(3)])
    assert errors_of(results) == []
    lake.assert_replicas_equal(every_version=False)


def test_events_in_random_order_converge(lake):
    build_rich_table(lake, appends=6)
    events = lake.events()
    random.Random(7).shuffle(events)
    results = lake.deliver_all(events)
    assert errors_of(results) == []
    lake.assert_replicas_equal(every_version=True)


def test_only_the_last_event_brings_replicas_to_the_head(lake):
    build_rich_table(lake, appends=6)
    last_commit = [e for e in lake.events() if e["data"]["url"].endswith(f"{lake.head('eastus'):020d}.json")]
    results = lake.deliver_all(last_commit)
    assert errors_of(results) == []
    lake.assert_replicas_equal(every_version=True)


def test_eight_concurrent_invocations_on_a_burst_converge(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    for i in range(1, 25):
        lake.write(batch(i * 5, 5), partition_by=["region"])
    events = lake.events() * 2
    random.Random(3).shuffle(events)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lake.deliver, events))
    assert all(e.retryable for e in errors_of(results)), errors_of(results)
    # A redelivery pass settles anything that was asked to retry.
    lake.deliver(lake.events()[-1])
    lake.assert_replicas_equal(every_version=False)


def test_reader_polling_a_replica_never_sees_an_unreadable_table(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.deliver_all(lake.events())
    for i in range(1, 12):
        lake.write(batch(i * 5, 5), partition_by=["region"])
        if i % 4 == 0:
            lake.table().delete(f"id < {i * 3}")
    lake.table().create_checkpoint()
    expected = {v: rows(lake.table("eastus", v).to_pyarrow_table()) for v in range(lake.head("eastus") + 1)}
    observations, failures, stop = [], [], threading.Event()
    progress = threading.Condition()
    reads = {"started": 0, "finished_from": -1}  # id of the next read; highest id of a finished read

    def poll():
        while not stop.is_set():
            with progress:
                read_id = reads["started"]
                reads["started"] += 1
            try:
                table = DeltaTable(lake.uri(), storage_options=lake.options("westeu"))
                version = table.version()
                seen = rows(table.to_pyarrow_table())
                observations.append(version)
                if seen != expected[version]:
                    failures.append(f"version {version} read different rows")
            except Exception as err:  # noqa: BLE001 - any failure to read is the finding
                failures.append(repr(err))
            with progress:
                reads["finished_from"] = max(reads["finished_from"], read_id)
                progress.notify_all()

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for event in lake.events():
            lake.deliver(event)
            # Synchronise on the reader: wait for a read that began after this delivery, so
            # the reader looks at every intermediate version (no sleeps, no timing guesses).
            with progress:
                mark = reads["started"]
                assert progress.wait_for(lambda: reads["finished_from"] >= mark, timeout=60)
    finally:
        stop.set()
        reader.join()
    assert failures == []
    assert len(observations) > 5 and max(observations) == lake.head("eastus")
    assert observations == sorted(observations), "the replica's version went backwards"


def test_replica_in_a_stopped_region_catches_up_after_restart(azurite, second_azurite, request):
    lake = Lake(azurite, request.node.name, replica_process=second_azurite)
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        for i in range(1, 4):
            lake.write(batch(i * 5, 5), partition_by=["region"])
        lake.deliver_all(lake.events())
        assert lake.head("seasia") == 3
        seen = lake.log_names("eastus")[-1]
        second_azurite.stop()
        for i in range(4, 9):
            lake.write(batch(i * 5, 5), partition_by=["region"])
        results = lake.deliver_all(lake.events(start_after=f"{lake.table_path}/_delta_log/{seen}"))
        by_replica = {o.replica: o for o in results[-1].outcomes}
        assert by_replica["westeu"].state != ReplicaState.ERROR
        assert by_replica["seasia"].state == ReplicaState.ERROR and by_replica["seasia"].retryable
        assert lake.head("westeu") == lake.head("eastus") == 8
        second_azurite.start()
        assert lake.head("seasia") == 3
        # Event Grid's retry of the last event is enough: the replica finds its own head.
        lake.deliver(lake.events()[-1])
        lake.assert_replicas_equal(every_version=True)
    finally:
        lake.close()


def test_empty_replica_seeds_from_checkpoint_when_early_log_files_were_cleaned(lake):
    build_rich_table(lake, appends=6)
    checkpoint = max(int(n[:20]) for n in lake.log_names("eastus") if n.endswith(".checkpoint.parquet"))
    container = lake.clients["eastus"].get_container_client(lake.container)
    for name in lake.log_names("eastus"):
        if name[:20].isdigit() and int(name[:20]) < checkpoint:
            container.delete_blob(f"{lake.table_path}/_delta_log/{name}")
    lake.write(batch(5000, 3), partition_by=["region"])
    head = lake.head("eastus")
    results = lake.deliver_all(lake.events()[-1:])
    assert errors_of(results) == []
    for account in ("westeu", "seasia"):
        names = lake.log_names(account)
        assert min(int(n[:20]) for n in names if n[:20].isdigit()) == checkpoint
        assert lake.head(account) == head
        for v in range(checkpoint, head + 1):
            assert rows(lake.table(account, v).to_pyarrow_table()) == rows(lake.table("eastus", v).to_pyarrow_table())
    # Only files the checkpoint and later commits reference were copied: no removed files.
    live = set(lake.table("eastus").file_uris())
    copied = {n for n in lake.blobs("westeu") if "/_delta_log/" not in n}
    assert {u.split(f"{lake.container}/", 1)[1] for u in live} <= copied
    assert len(copied) < len([n for n in lake.blobs("eastus") if "/_delta_log/" not in n])


def test_diverged_replica_is_reported_and_left_untouched(lake, captured_logs):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.write(batch(5, 5), partition_by=["region"])
    lake.deliver_all(lake.events())
    # Somebody wrote version 2 straight into the westeu replica.
    foreign = b'{"commitInfo":{"timestamp":1,"operation":"WRITE"}}\n'
    lake.clients["westeu"].get_blob_client(lake.container, f"{lake.table_path}/_delta_log/{2:020d}.json").upload_blob(foreign)
    before = lake.blobs("westeu")
    lake.write(batch(10, 5), partition_by=["region"])
    lake.write(batch(15, 5), partition_by=["region"])
    results = lake.deliver_all(lake.events()[-2:])
    outcome = {o.replica: o for o in results[-1].outcomes}
    assert outcome["westeu"].state == ReplicaState.DIVERGED and not outcome["westeu"].retryable
    assert "diverged" in str(outcome["westeu"].error) and "version 2" in str(outcome["westeu"].error)
    assert outcome["seasia"].state in (ReplicaState.REPLICATED, ReplicaState.UP_TO_DATE)
    assert lake.head("seasia") == 3
    after = lake.blobs("westeu")
    assert {k: v for k, v in after.items() if k in before} == before
    assert lake.blob_bytes("westeu", f"_delta_log/{2:020d}.json") == foreign
    assert any("replica.diverged" in r.getMessage() for r in captured_logs.records)


def test_a_foreign_commit_is_reported_even_when_its_own_event_is_the_only_one(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.deliver_all(lake.events())
    foreign = b'{"commitInfo":{"timestamp":1,"operation":"FOREIGN"}}\n'
    lake.clients["westeu"].get_blob_client(lake.container, f"{lake.table_path}/_delta_log/{1:020d}.json").upload_blob(foreign)
    lake.write(batch(5, 5), partition_by=["region"])
    (result,) = lake.deliver_all(lake.events()[-1:])
    states = {o.replica: o.state for o in result.outcomes}
    assert states == {"westeu": ReplicaState.DIVERGED, "seasia": ReplicaState.REPLICATED}


def test_crc_files_follow_their_commit_whichever_event_comes_first(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.write(batch(5, 5), partition_by=["region"])
    # Writers such as Spark add <v>.crc after <v>.json; deltalake does not, so add one as Spark would.
    crc = b'{"tableSizeBytes":1,"numFiles":2,"numMetadata":1,"numProtocol":1}'
    container = lake.clients["eastus"].get_container_client(lake.container)
    container.upload_blob(f"{lake.table_path}/_delta_log/{1:020d}.crc", crc)
    events = {e["subject"].rsplit("/", 1)[1]: e for e in lake.events()}
    lake.deliver(events[f"{0:020d}.json"])
    lake.deliver(events[f"{1:020d}.json"])
    assert f"{1:020d}.crc" not in lake.log_names("westeu")
    lake.deliver(events[f"{1:020d}.crc"])
    for account in ("westeu", "seasia"):
        assert lake.blob_bytes(account, f"_delta_log/{1:020d}.crc") == crc
