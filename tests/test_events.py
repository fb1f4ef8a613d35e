import pytest

from devtools.events import blob_created_event, blob_renamed_event
from shared.config.parse import parse_config
from shared.delta.log import LogFileKind
from shared.errors import InvalidEvent
from shared.replication.events import parse_event, route_event, split_blob_url

CONFIG = parse_config({"tables": [{
    "name": "sales",
    "source": {"connection": "EASTUS_STORAGE", "container": "lake", "path": "delta/sales"},
    "replicas": [{"name": "westeu", "connection": "WESTEU_STORAGE", "container": "lake", "path": "delta/sales"}],
}]})
ACCOUNTS = {"EASTUS_STORAGE": "eastus", "WESTEU_STORAGE": "westeu"}


def route(event):
    return route_event(parse_event(event), CONFIG, ACCOUNTS)


@pytest.mark.parametrize("port, dfs", [(None, False), (None, True), (10000, False)])
def test_commit_event_routes_to_table_and_version(port, dfs):
    event = blob_created_event("eastus", "lake", "delta/sales/_delta_log/00000000000000000042.json",
                               azurite_port=port, dfs=dfs)
    ref = route(event)
    assert (ref.table.name, ref.version, ref.log_file.kind) == ("sales", 42, LogFileKind.COMMIT)


def test_renamed_event_uses_the_destination():
    event = blob_renamed_event("eastus", "lake", "delta/sales/_delta_log/.tmp/abc.json",
                               "delta/sales/_delta_log/00000000000000000007.json")
    assert route(event).version == 7


def test_cloudevents_schema_is_accepted():
    eg = blob_created_event("eastus", "lake", "delta/sales/_delta_log/00000000000000000003.json")
    cloud = {"specversion": "1.0", "type": eg["eventType"], "source": eg["topic"], "id": "1",
             "subject": eg["subject"], "data": eg["data"]}
    assert route(cloud).version == 3


@pytest.mark.parametrize("blob", [
    "delta/sales/region=a/part-0.parquet",
    "delta/sales/_delta_log/.00000000000000000003.json.8f1e.tmp",
    "delta/sales/_delta_log/.tmp/00000000000000000003.json",
    "delta/sales/_delta_log/00000000000000000003.json.tmp",
])
def test_data_temporary_and_hidden_files_are_ignored(blob):
    assert route(blob_created_event("eastus", "lake", blob)) is None


@pytest.mark.parametrize("event, message", [
    (blob_created_event("nobody", "lake", "delta/sales/_delta_log/00000000000000000001.json"), "account"),
    (blob_created_event("eastus", "other", "delta/sales/_delta_log/00000000000000000001.json"), "container"),
    (blob_created_event("eastus", "lake", "delta/orders/_delta_log/00000000000000000001.json"), "no configured table"),
])
def test_events_outside_configured_tables_are_rejected(event, message):
    with pytest.raises(InvalidEvent, match=message):
        route(event)


def test_events_from_a_replica_location_route_with_their_location():
    """Any location may be primary after a promote; the handler fences those that are not."""
    ref = route(blob_created_event("westeu", "lake", "delta/sales/_delta_log/00000000000000000001.json"))
    assert (ref.table.name, ref.location, ref.version) == ("sales", "westeu", 1)
    assert route(blob_created_event("eastus", "lake", "delta/sales/_delta_log/00000000000000000001.json")).location \
        == "primary"


def _with_url(url):
    event = blob_created_event("eastus", "lake", "x")
    event["data"]["url"] = url
    return event


@pytest.mark.parametrize("event", [
    _with_url("https://eastus.blob.core.windows.net/lake/delta/sales/../orders/_delta_log/00000000000000000001.json"),
    _with_url("https://eastus.blob.core.windows.net/lake/delta/sales/%2E%2E/orders/_delta_log/00000000000000000001.json"),
    _with_url("https://eastus.blob.core.windows.net/lake/delta/sales/%252e%252e/orders/_delta_log/00000000000000000001.json"),
    _with_url("https://eastus.blob.core.windows.net/lake/delta/sales/_delta_log/..%2F..%2Fx.json"),
    _with_url("ftp://eastus.blob.core.windows.net/lake/x"),
    _with_url("https://evil.example.com/lake/delta/sales/_delta_log/00000000000000000001.json"),
    _with_url(""),
    {**blob_created_event("eastus", "lake", "delta/sales/_delta_log/00000000000000000001.json"),
     "eventType": "Microsoft.Storage.BlobDeleted"},
    {k: v for k, v in blob_created_event("eastus", "lake", "x").items() if k != "data"},
    {"hello": "world"},
    {**blob_created_event("eastus", "lake", "delta/sales/_delta_log/00000000000000000001.json"),
     "topic": "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/westeu"},
])
def test_hostile_or_malformed_events_are_rejected(event):
    with pytest.raises(InvalidEvent):
        route(event)


def test_azurite_url_splits_account_container_and_decoded_name():
    assert split_blob_url("http://127.0.0.1:1234/eastus/lake/delta/sales/region%3D50%25%20off/p.parquet") == \
        ("eastus", "lake", "delta/sales/region=50% off/p.parquet")
