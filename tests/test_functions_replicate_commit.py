"""The Functions app indexes as the contract says, and replicate_commit works on real event objects."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import azure.functions as func
import pytest

from devtools.events import blob_created_event
from functions.replicate_commit import replicate_commit
from shared import runtime as runtime_module
from shared.errors import ReplicaUnreachable
from tests.support.lake import batch


def as_trigger_event(envelope: dict) -> func.EventGridEvent:
    return func.EventGridEvent(
        id=envelope["id"], data=envelope["data"], topic=envelope["topic"], subject=envelope["subject"],
        event_type=envelope["eventType"], event_time=datetime.now(timezone.utc), data_version="",
    )


@pytest.fixture
def app_settings(lake, monkeypatch):
    """Point the host runtime at the test lake through real app settings."""
    monkeypatch.setenv("REPLICATION_CONFIG", json.dumps(lake.config_doc))
    for name, value in lake.environ.items():
        monkeypatch.setenv(name, value)
    runtime_module.reset_runtime()
    yield lake
    runtime_module.reset_runtime()


@pytest.mark.parametrize("style", ["azure", "azurite"])
def test_handler_replicates_from_a_real_event_grid_event(app_settings, style):
    lake = app_settings
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.write(batch(5, 5), partition_by=["region"])
    blob = f"{lake.table_path}/_delta_log/{1:020d}.json"
    port = lake.azurite.port if style == "azurite" else None
    envelope = blob_created_event("eastus", lake.container, blob, azurite_port=port)
    replicate_commit(as_trigger_event(envelope))
    assert lake.head("westeu") == lake.head("seasia") == 1
    lake.assert_replicas_equal(every_version=True)


def test_handler_acknowledges_rejected_events_without_writing(app_settings):
    lake = app_settings
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    envelope = blob_created_event("eastus", "not-configured", f"{lake.table_path}/_delta_log/{0:020d}.json")
    replicate_commit(as_trigger_event(envelope))  # returns: Event Grid must not retry
    assert lake.head("westeu") is None


def test_handler_raises_retryable_failures_so_event_grid_redelivers(azurite, second_azurite, monkeypatch, request):
    from tests.support.lake import Lake

    lake = Lake(azurite, request.node.name, replica_process=second_azurite)
    try:
        monkeypatch.setenv("REPLICATION_CONFIG", json.dumps(lake.config_doc))
        for name, value in lake.environ.items():
            monkeypatch.setenv(name, value)
        runtime_module.reset_runtime()
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        second_azurite.stop()
        envelope = blob_created_event("eastus", lake.container, f"{lake.table_path}/_delta_log/{0:020d}.json")
        with pytest.raises(ReplicaUnreachable) as info:
            replicate_commit(as_trigger_event(envelope))
        assert "seasia" in str(info.value)
        assert lake.head("westeu") == 0  # the reachable replica was not held back
    finally:
        runtime_module.reset_runtime()
        lake.close()
