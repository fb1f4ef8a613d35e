"""The local event relay: each new log blob delivered once; a restart resumes without loss."""

from __future__ import annotations

from devtools.azurite import AzuriteProcess
from shared.replication.commit_events import handle_storage_event
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
