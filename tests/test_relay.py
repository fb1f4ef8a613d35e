"""The local event relay: each new log blob delivered once; a restart resumes without loss."""

from __future__ import annotations

from devtools.azurite import AzuriteProcess
from shared.app.commit_event import handle_storage_event
from devtools.relay import LogRelay
from tests.support.lake import Lake, batch
from tests.test_cli import run_cli


def names(events: list[dict]) -> list[str]:
    return [e["subject"].rsplit("/", 1)[1] for e in events]


def test_relay_delivers_each_new_log_blob_once_and_resumes_after_restarts(azurite, tmp_path, request):
    primary = AzuriteProcess(("eastus",)).start()
    lake = Lake(azurite, request.node.name, primary_process=primary)
    state = tmp_path / "relay.json"
    delivered: list[dict] = []

    def deliver(event):
        delivered.append(event)
        handle_storage_event(lake.runtime, event)

    try:
        relay = LogRelay(lake.runtime, state, deliver)
        assert relay.poll() == 0  # nothing yet (the table does not exist)
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        lake.write(batch(5, 5), partition_by=["region"])
        assert relay.poll() == 2 and relay.poll() == 0
        assert lake.head("westeu") == lake.head("seasia") == 1
        lake.table().create_checkpoint()  # 1.checkpoint.parquet sorts before 1.json, already seen
        assert names(delivered[2:]) == [] and relay.poll() == 2
        assert set(names(delivered[2:])) == {f"{1:020d}.checkpoint.parquet", "_last_checkpoint"}
        event = delivered[0]
        assert event["eventType"] == "Microsoft.Storage.BlobCreated"
        assert event["data"]["url"].startswith(f"http://127.0.0.1:{primary.port}/eastus/{lake.container}/")
        assert event["data"]["contentLength"] > 0 and event["data"]["eTag"] and event["data"]["sequencer"]

        # The relay restarts: a new process with the same state file.
        relay = LogRelay(lake.runtime, state, deliver)
        assert relay.poll() == 0
        lake.write(batch(10, 5), partition_by=["region"])
        # Azurite restarts too, between a write and the next poll.
        primary.restart()
        lake.write(batch(15, 5), partition_by=["region"])
        assert relay.poll() == 2
        assert names(delivered).count(f"{3:020d}.json") == 1
        assert sorted(set(names(delivered))) == sorted(names(delivered))  # no duplicates at all
        lake.assert_replicas_equal(every_version=True)
    finally:
        lake.close()
        primary.close()


def test_relay_command_delivers_in_process_when_no_host_answers(lake, tmp_path):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.write(batch(5, 5), partition_by=["region"])
    result = run_cli(lake, "relay", "--once", "--state", str(tmp_path / "s.json"),
                     "--host-url", "http://127.0.0.1:9/runtime/webhooks/EventGrid?functionName=replicate_commit")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("delivered ") == 2
    assert lake.head("westeu") == lake.head("seasia") == 1


def test_relay_follows_the_topologys_primary_and_recognises_a_recreated_blob_by_etag(azurite, tmp_path, request):
    from tests.support.failover import failover_lake, write_to

    lake = failover_lake(azurite, request.node.name)
    delivered: list[dict] = []

    def deliver(event):
        delivered.append(event)
        handle_storage_event(lake.runtime, event)

    try:
        relay = LogRelay(lake.runtime, tmp_path / "relay.json", deliver)
        lake.write(batch(0, 5), mode="overwrite")
        lake.write(batch(5, 5))
        assert relay.poll() == 2 and lake.head("westeu") == lake.head("seasia") == 1

        # Promote westeu; the writer moves there. The relay must now watch westeu's log.
        store = lake.runtime.topology_store()
        store.flip(lake.runtime.topology(lake.table_name), "westeu", 1)
        write_to(lake, "westeu", batch(10, 5))
        before = len(delivered)
        relay.poll()
        from_westeu = [e for e in delivered[before:] if "/westeu/" in e["data"]["url"]]
        assert [e["subject"].rsplit("/", 1)[1] for e in from_westeu][-1] == f"{2:020d}.json"
        assert lake.head("eastus") == lake.head("seasia") == 2  # the new primary's write replicated
        assert relay.poll() == 0

        # The same name written again (as after rejoin re-creates a version): a new blob, a new ETag.
        blob = lake.clients["westeu"].get_blob_client(lake.container, f"{lake.table_path}/_delta_log/{2:020d}.json")
        data = blob.download_blob().readall()
        blob.delete_blob()
        blob.upload_blob(data)
        before = len(delivered)
        assert relay.poll() == 1
        assert delivered[before]["data"]["eTag"].strip('"') == blob.get_blob_properties().etag.strip('"')
        assert relay.poll() == 0
    finally:
        lake.close()
