"""Reading from the nearest region: routing, staleness, divergence, outages, timestamp time travel.

Each region is its own storage account; westeu (and in outage tests the primary) runs in its
own Azurite process so that it can be stopped.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import azure.functions as func
import pytest
from azure.data.tables import TableServiceClient

from devtools.azurite import AzuriteProcess
from functions.resolve_table import resolve_table as resolve_table_function
from shared import runtime as runtime_module
from shared.config.parse import parse_config
from shared.errors import NoReadableLocation
from shared.health.lag import ReplicaHealth, ReplicaLag
from shared.app.lag_check import check_replication
from shared.health.status import StatusStore
from shared.app.open_table import open_table, resolve_table
from shared.reads.probe import LocationProbe, probe_stores
from shared.reads.resolver import Purpose, SkipReason, StalenessBasis, resolve_location
from shared.reads.timestamps import TimestampUnavailable, to_ms, version_at_timestamp
from shared.runtime import ReplicationRuntime
from shared.storage.clients import PROBE_READ_TIMEOUT_SECONDS
from tests.support.lake import Lake, batch, commit_actions, rows

ROUTING = {"westeu": ["westeu", "seasia", "primary"], "eastasia": ["seasia", "primary"], "default": ["primary"]}


def make_lake(azurite, request, *, westeu: AzuriteProcess | None, seasia: AzuriteProcess | None = None,
              primary: AzuriteProcess | None = None, routing: dict | None = ROUTING) -> Lake:
    """A lake whose westeu replica lives in `westeu` (its own Azurite); regions and routing set."""
    lake = Lake(azurite, request.node.name, replica_process=seasia, primary_process=primary)
    if westeu is not None:
        _move_westeu(lake, westeu)
    table = lake.config_doc["tables"][0]
    table["name"] = "sales" + uuid.uuid4().hex[:8]  # status rows of parallel tests never mix
    table["source"]["region"] = "eastus"
    table["replicas"][0]["region"] = "westeu"
    table["replicas"][1]["region"] = "seasia"
    if routing is not None:
        table["routing"] = routing
    return lake


def _move_westeu(lake: Lake, westeu: AzuriteProcess) -> None:
    lake.processes["westeu"] = westeu
    lake.environ["WESTEU_STORAGE"] = westeu.connection_string("westeu")
    lake.clients["westeu"].close()
    from azure.storage.blob import BlobServiceClient
    lake.clients["westeu"] = BlobServiceClient.from_connection_string(lake.environ["WESTEU_STORAGE"])


@pytest.fixture
def westeu_process():
    proc = AzuriteProcess(("westeu",)).start()
    yield proc
    proc.close()


@pytest.fixture
def status(azurite):
    service = TableServiceClient.from_connection_string(azurite.connection_string("devstoreaccount1"))
    store = StatusStore(service, table_name="Reads" + uuid.uuid4().hex[:12])
    yield store
    service.delete_table(store._table.table_name)


def table_config(lake):
    return lake.runtime.config.tables[0]


def resolve(lake, **kwargs):
    return resolve_location(lake.runtime, table_config(lake), **kwargs)


def replicate(lake):
    results = lake.deliver_all(lake.events())
    assert all(o.error is None for r in results for o in r.outcomes)


def commit_time(lake, account: str, version: int) -> datetime:
    info = next(a["commitInfo"] for a in commit_actions(lake.blob_bytes(account, f"_delta_log/{version:020d}.json"))
                if "commitInfo" in a)
    return datetime.fromtimestamp(info["timestamp"] / 1000, timezone.utc)


def test_westeu_reader_reads_westeu_then_fails_over_per_routing_when_westeu_stops(
        azurite, westeu_process, request, captured_logs):
    lake = make_lake(azurite, request, westeu=westeu_process)
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        lake.write(batch(5, 5), partition_by=["region"])
        replicate(lake)
        found = resolve(lake, region="westeu")
        assert (found.location, found.region, found.version, found.staleness_seconds, found.tried) == \
            ("westeu", "westeu", 1, 0.0, ())
        assert found.uri == f"abfss://{lake.container}@westeu.dfs.core.windows.net/delta/sales"
        assert found.requests["westeu"] == 2  # HEAD of the primary's head commit, HEAD of the next
        table = table_config(lake)
        assert rows(open_table(table.name, region="westeu", runtime=lake.runtime).to_pyarrow_table()) == \
            rows(lake.table("eastus").to_pyarrow_table())

        westeu_process.stop()
        captured_logs.clear()
        started = time.monotonic()
        found = resolve(lake, region="westeu")
        elapsed = time.monotonic() - started
        assert (found.location, found.version, found.primary_reachable) == ("seasia", 1, True)
        assert [(t.location, t.reason) for t in found.tried] == [("westeu", SkipReason.UNREACHABLE)]
        assert elapsed < PROBE_READ_TIMEOUT_SECONDS, elapsed
        skipped = [r.getMessage() for r in captured_logs.records if r.getMessage().startswith("read.skipped")]
        assert len(skipped) == 1 and "location=westeu reason=unreachable" in skipped[0]
        chosen = [r.getMessage() for r in captured_logs.records if r.getMessage().startswith("read.resolved")]
        assert len(chosen) == 1 and "location=seasia" in chosen[0] and "skipped=westeu:unreachable" in chosen[0]
        assert lake.environ["WESTEU_STORAGE"].split("AccountKey=")[1].split(";")[0] not in captured_logs.text

        # A reader in eastasia (seasia, then the primary) is unaffected; others go to the primary.
        assert resolve(lake, region="eastasia").location == "seasia"
        assert resolve(lake, region="westus").location == "primary"
    finally:
        lake.close()


def test_lagging_replica_skipped_beyond_staleness_bound_and_below_min_version(azurite, request):
    lake = make_lake(azurite, request, westeu=None, routing={"westeu": ["westeu", "primary"]})
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        replicate(lake)
        for i in range(1, 6):
            lake.write(batch(i * 5, 5), partition_by=["region"])  # not replicated: westeu is 5 behind
        assert lake.head("eastus") == 5 and lake.head("westeu") == 0
        # Measured lag = now - the time of the oldest commit westeu lacks (version 1).
        now = commit_time(lake, "eastus", 1) + timedelta(seconds=120)
        found = resolve(lake, region="westeu", max_staleness_seconds=121, now=now)
        assert (found.location, found.version, found.staleness_seconds, found.staleness_basis) == \
            ("westeu", 0, 120.0, StalenessBasis.MEASURED)
        found = resolve(lake, region="westeu", max_staleness_seconds=119, now=now)
        assert (found.location, found.version, found.staleness_seconds) == ("primary", 5, 0.0)
        assert [(t.location, t.reason) for t in found.tried] == [("westeu", SkipReason.TOO_STALE)]
        assert "too stale by 1.0 s" in found.tried[0].detail
        found = resolve(lake, region="westeu", min_version=1)
        assert (found.location, [(t.location, t.reason) for t in found.tried]) == \
            ("primary", [("westeu", SkipReason.BEHIND_MIN_VERSION)])
        assert resolve(lake, region="westeu", min_version=0).location == "westeu"
        # Bounded: a replica 5 behind costs at most 2 + 2*ceil(log2 5) HEADs.
        assert found.requests["westeu"] <= 8
    finally:
        lake.close()


def test_primary_stopped_replicas_chosen_with_staleness_from_last_caught_up(
        azurite, westeu_process, second_azurite, request, status):
    primary = AzuriteProcess(("eastus",)).start()
    lake = make_lake(azurite, request, westeu=westeu_process, seasia=second_azurite, primary=primary,
                     routing={"westeu": ["primary", "westeu", "seasia"]})
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        lake.write(batch(5, 5), partition_by=["region"])
        check_replication(lake.runtime, status, None)  # heals both replicas and records them caught up
        row = status.get_row(table_config(lake).name, "westeu")
        assert row.status == "healthy" and row.caught_up_at == row.checked_at
        primary.stop()
        now = datetime.fromisoformat(row.caught_up_at) + timedelta(seconds=30)
        found = resolve(lake, region="westeu", status=status, now=now)
        assert (found.location, found.version, found.primary_reachable, found.staleness_basis,
                found.staleness_seconds) == ("westeu", 1, False, StalenessBasis.LAST_CAUGHT_UP, 30.0)
        assert [(t.location, t.reason) for t in found.tried] == [("primary", SkipReason.UNREACHABLE)]
        assert found.as_json()["primary_reachable"] is False
        # A row written during the outage (unreachable) keeps the caught-up time: nothing new was learnt.
        outage = ReplicaLag(row.table, "westeu", None, 1, 0, 0.0, ReplicaHealth.ERROR, now, "primary unreadable")
        status.put_row(outage, alert_state=row.alert_state, previous=row)
        assert status.get_row(table_config(lake).name, "westeu").caught_up_at == row.caught_up_at
        with pytest.raises(NoReadableLocation) as err:
            resolve(lake, region="westeu", status=status, now=now, max_staleness_seconds=10)
        assert [(t.location, t.reason) for t in err.value.tried] == [
            ("primary", SkipReason.UNREACHABLE), ("westeu", SkipReason.TOO_STALE), ("seasia", SkipReason.TOO_STALE)]
    finally:
        lake.close()
        primary.close()


def test_diverged_replica_is_never_returned(azurite, request):
    lake = make_lake(azurite, request, westeu=None)
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        lake.write(batch(5, 5), partition_by=["region"])
        replicate(lake)
        foreign = b'{"commitInfo":{"timestamp":1,"operation":"WRITE"}}\n'
        lake.clients["westeu"].get_blob_client(lake.container, "delta/sales/_delta_log/00000000000000000002.json") \
            .upload_blob(foreign)
        found = resolve(lake, region="westeu")  # westeu is ahead of the primary
        assert (found.location, [(t.location, t.reason) for t in found.tried]) == \
            ("seasia", [("westeu", SkipReason.DIVERGED)])
        lake.write(batch(10, 5), partition_by=["region"])  # the primary's own, different version 2
        for kwargs in ({}, {"min_version": 2}, {"max_staleness_seconds": 10**6}, {"version": 2}):
            found = resolve(lake, region="westeu", **kwargs)
            assert found.location != "westeu" and found.tried[0].reason == SkipReason.DIVERGED, kwargs
    finally:
        lake.close()


def http_get(table: str, params: dict) -> func.HttpResponse:
    return resolve_table_function(func.HttpRequest(
        "GET", f"http://localhost:7071/api/tables/{table}/endpoint", params=params, body=b"",
        route_params={"table": table}))


@pytest.fixture
def app_settings(monkeypatch):
    def apply(lake):
        monkeypatch.setenv("REPLICATION_CONFIG", json.dumps(lake.config_doc))
        for name, value in lake.environ.items():
            monkeypatch.setenv(name, value)
        runtime_module.reset_runtime()
    yield apply
    runtime_module.reset_runtime()


def test_every_location_down_one_error_naming_each_and_http_503(
        azurite, westeu_process, second_azurite, request, app_settings):
    primary = AzuriteProcess(("eastus",)).start()
    lake = make_lake(azurite, request, westeu=westeu_process, seasia=second_azurite, primary=primary)
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        replicate(lake)
        app_settings(lake)
        name = table_config(lake).name
        response = http_get(name, {"region": "westeu", "purpose": "write"})
        assert response.status_code == 200
        body = json.loads(response.get_body())
        assert (body["location"], body["uri"], body["version"]) == \
            ("primary", f"abfss://{lake.container}@eastus.dfs.core.windows.net/delta/sales", 0)
        for proc in (primary, westeu_process, second_azurite):
            proc.stop()
        with pytest.raises(NoReadableLocation) as err:
            resolve(lake, region="westeu")
        assert [(t.location, t.reason) for t in err.value.tried] == [
            ("westeu", SkipReason.UNREACHABLE), ("seasia", SkipReason.UNREACHABLE),
            ("primary", SkipReason.UNREACHABLE)]
        assert all(f"{loc}: unreachable" in str(err.value) for loc in ("westeu", "seasia", "primary"))
        response = http_get(name, {"region": "westeu", "max_staleness_seconds": "60"})
        assert response.status_code == 503 and response.mimetype == "application/json"
        body = json.loads(response.get_body())
        assert [(t["location"], t["reason"]) for t in body["tried"]] == \
            [("westeu", "unreachable"), ("seasia", "unreachable"), ("primary", "unreachable")]
        assert "AccountKey" not in response.get_body().decode()
        # Writes still name the primary, down or not.
        body = json.loads(http_get(name, {"purpose": "write"}).get_body())
        assert (body["location"], body["primary_reachable"]) == ("primary", False)
    finally:
        lake.close()
        primary.close()


def test_http_rejects_unknown_tables_and_bad_parameters(azurite, request, app_settings):
    lake = make_lake(azurite, request, westeu=None)
    try:
        app_settings(lake)
        assert http_get("nope", {}).status_code == 404
        name = table_config(lake).name
        response = http_get(name, {"min_version": "-1", "purpose": "delete", "timestamp": "yesterday", "x": "1"})
        assert response.status_code == 400
        error = json.loads(response.get_body())["error"]
        for text in ("min_version must be a whole number", "purpose must be read or write",
                     "timestamp 'yesterday' is not ISO 8601", "unknown parameter 'x'"):
            assert text in error
        assert lake.blobs("westeu") == {}  # nothing written anywhere
    finally:
        lake.close()


def copy_seeded_replica(lake, checkpoint: int, path: str) -> None:
    """A replica seeded from the primary's checkpoint: data files, then the log from `checkpoint` on."""
    src = lake.clients["eastus"].get_container_client(lake.container)
    dst = lake.clients["westeu"].get_container_client(lake.container)
    prefix = f"{lake.table_path}/"
    for blob in src.list_blobs(name_starts_with=prefix):
        rel = blob.name[len(prefix):]
        if rel.startswith("_delta_log/") and rel[11:31].isdigit() and int(rel[11:31]) < checkpoint:
            continue
        dst.upload_blob(f"{path}/{rel}", src.download_blob(blob.name).readall())


def test_timestamp_resolves_by_commit_times_to_the_same_version_everywhere(azurite, request):
    lake = make_lake(azurite, request, westeu=None, routing=None)
    try:
        lake.write(batch(0, 3), mode="overwrite")
        for i in range(1, 30):
            lake.write(batch(i * 3, 3))
            if i == 20:
                lake.table().create_checkpoint()
        replicate(lake)  # replica commits are written now: their Last-Modified times differ from the primary's
        copy_seeded_replica(lake, 20, "delta/seeded")
        doc = json.loads(json.dumps(lake.config_doc))
        table = doc["tables"][0]
        table["replicas"].append({"name": "seeded", "connection": "WESTEU_STORAGE", "container": lake.container,
                                  "path": "delta/seeded", "region": "brazilsouth"})
        table["routing"] = {"eastus": ["primary"], "westeu": ["westeu"], "seasia": ["seasia"],
                            "brazilsouth": ["seeded"], "default": ["primary"]}
        runtime = ReplicationRuntime(parse_config(doc), lake.environ)
        config = runtime.config.tables[0]
        times = [commit_time(lake, "eastus", v) for v in range(30)]
        stores = probe_stores(runtime)
        probes = {loc.name: LocationProbe(stores.table(loc), loc) for loc in config.locations}
        try:
            # Every commit's time, on every location, by the commits' own times.
            bounds = {name: (probe.earliest_version(), probe.head(29)) for name, probe in probes.items()}
            assert bounds == {"primary": (0, 29), "westeu": (0, 29), "seasia": (0, 29), "seeded": (20, 29)}
            for v in range(30):
                expected = max(u for u in range(30) if times[u] <= times[v])
                for name, probe in probes.items():
                    earliest, head = bounds[name]
                    if name == "seeded" and expected < 20:
                        with pytest.raises(TimestampUnavailable, match="before version 20"):
                            version_at_timestamp(probe.commit_time, to_ms(times[v]), earliest=earliest, head=head)
                        continue
                    assert version_at_timestamp(probe.commit_time, to_ms(times[v]), earliest=earliest,
                                                head=head) == expected, (name, v)
            # Through the resolver and open_table: the version and the rows match the primary's.
            for v in (3, 19, 20, 26, 29):
                expected = max(u for u in range(30) if times[u] <= times[v])
                want = rows(lake.table("eastus", expected).to_pyarrow_table())
                for region in ("eastus", "westeu", "seasia", "brazilsouth"):
                    if region == "brazilsouth" and expected < 20:
                        with pytest.raises(NoReadableLocation) as err:
                            resolve_location(runtime, config, region=region, timestamp=times[v])
                        assert err.value.tried[0].reason == SkipReason.VERSION_UNAVAILABLE
                        assert "before version 20" in err.value.tried[0].detail
                        continue
                    found = resolve_location(runtime, config, region=region, timestamp=times[v])
                    assert found.version == expected, (region, v)
                    assert sum(found.requests.values()) <= 40, found.requests
                    if v not in (19, 29):
                        continue
                    got = open_table(config.name, region=region, timestamp=times[v], runtime=runtime)
                    assert (got.version(), rows(got.to_pyarrow_table())) == (expected, want)
            with pytest.raises(NoReadableLocation) as err:
                resolve_location(runtime, config, region="eastus", timestamp=times[0] - timedelta(seconds=1))
            assert err.value.tried[0].reason == SkipReason.VERSION_UNAVAILABLE
        finally:
            runtime.close()
    finally:
        lake.close()


def test_resolve_table_refuses_unknown_tables_and_contradictions(lake):
    with pytest.raises(Exception, match="table 'nope' is not configured"):
        resolve_table("nope", runtime=lake.runtime)
    with pytest.raises(ValueError, match="either version or timestamp"):
        resolve_table("sales", runtime=lake.runtime, version=1, timestamp=datetime.now(timezone.utc))
    with pytest.raises(ValueError, match="max_staleness_seconds"):
        resolve_table("sales", runtime=lake.runtime, max_staleness_seconds=-1)


def test_write_purpose_is_the_primary_even_for_a_reader_elsewhere(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    found = resolve_location(lake.runtime, lake.runtime.config.tables[0], region="westeu", purpose=Purpose.WRITE)
    assert (found.location, found.version, found.deltalake_uri) == ("primary", 0, lake.uri())


def test_the_time_of_a_commit_larger_than_one_read_is_found_at_its_end(lake):
    """A commit over 64 KiB whose commitInfo comes last (a writer that puts it there): the first
    ranged read has no time, so the probe reads the commit's tail. The file's size comes from the
    ranged answer's Content-Range (a ranged GET's own size is the range's)."""
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    adds = [json.dumps({"add": {"path": f"region=x/part-{i:05d}.parquet", "size": 1, "modificationTime": 1,
                                "dataChange": True, "partitionValues": {"region": "x"}}}) for i in range(900)]
    body = "\n".join(adds + [json.dumps({"commitInfo": {"timestamp": 1767225600123, "operation": "WRITE"}})]) + "\n"
    assert len(body) > 64 * 1024
    lake.clients["eastus"].get_blob_client(lake.container, f"{lake.table_path}/_delta_log/{1:020d}.json") \
        .upload_blob(body.encode())
    table = lake.runtime.config.tables[0]
    probe = LocationProbe(probe_stores(lake.runtime).table(table.source), table.source)
    assert probe.commit_time(1) == 1767225600123
    assert probe.requests == 2  # the head of the commit, then its tail
