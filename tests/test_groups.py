"""Groups (issue 25): every Delta table under a prefix is replicated without an entry of its own,
named `<group>:<path, '/' as '.'>`; an event starts a table not seen before, the lag check's sweep
finds tables whose events were lost and reports a dropped one; a group's table works by name."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
from azure.storage.blob import BlobServiceClient
from deltalake import DeltaTable, write_deltalake

from devtools.events import blob_created_event, log_blob_events
from shared.app.commit_event import EventDisposition, handle_storage_event
from shared.app.group_status import stored_group_status
from shared.app.lag_check import check_replication
from shared.config.parse import parse_config
from shared.errors import ConfigError
from shared.failover.promote import promote
from shared.health.status import StatusStore
from shared.runtime import ReplicationRuntime
from tests.support.alert_sink import AlertSink
from tests.support.lake import rows
from tests.test_cli import run_cli

ACCOUNTS = ("eastus", "westeu", "seasia")
# Where each location keeps the group: the replicas' prefixes differ from the source's on purpose.
PREFIX = {"eastus": "warehouse", "westeu": "dr/warehouse", "seasia": ""}


class GroupLake:
    """Group `lake`: every table under eastus `warehouse/`, replicated to westeu `dr/warehouse/` and to
    the root of seasia's container; `tmp/*` excluded."""

    def __init__(self, azurite, test_name: str, environ: dict | None = None, **group_options) -> None:
        self.azurite = azurite
        slug = re.sub(r"[^a-z0-9]", "", test_name.lower())[:20] or "t"
        self.container = f"{slug}-{uuid.uuid4().hex[:10]}"
        self.environ = {"AzureWebJobsStorage": azurite.connection_string("devstoreaccount1"),
                        **{f"{a.upper()}_STORAGE": azurite.connection_string(a) for a in ACCOUNTS}, **(environ or {})}
        self.clients = {a: BlobServiceClient.from_connection_string(self.environ[f"{a.upper()}_STORAGE"])
                        for a in ACCOUNTS}
        self.clients["eastus"].create_container(self.container)
        self.group = "lake" + uuid.uuid4().hex[:6]
        self.config_doc = {"groups": [{
            "name": self.group,
            "source": {"name": "eastus", "connection": "EASTUS_STORAGE", "container": self.container,
                       "prefix": PREFIX["eastus"]},
            "replicas": [{"name": a, "connection": f"{a.upper()}_STORAGE", "container": self.container,
                          "prefix": PREFIX[a]} for a in ("westeu", "seasia")],
            "exclude": ["tmp/*"],
            **group_options,
        }]}
        self.runtime = ReplicationRuntime(parse_config(self.config_doc), self.environ)

    def name(self, relative: str) -> str:
        return f"{self.group}:{relative.replace('/', '.')}"

    def uri(self, account: str, relative: str) -> str:
        return f"az://{self.container}/{'/'.join(p for p in (PREFIX[account], relative) if p)}"

    def write(self, relative: str, data: pa.Table, mode: str = "append") -> None:
        write_deltalake(self.uri("eastus", relative), data, mode=mode,
                        storage_options=self.azurite.storage_options("eastus"))

    def read(self, account: str, relative: str, version: int | None = None) -> list[tuple]:
        return rows(DeltaTable(self.uri(account, relative), version=version,
                               storage_options=self.azurite.storage_options(account)).to_pyarrow_table())

    def version(self, account: str, relative: str) -> int:
        return DeltaTable(self.uri(account, relative), storage_options=self.azurite.storage_options(account)).version()

    def events(self, relative: str) -> list[dict]:
        path = f"{PREFIX['eastus']}/{relative}"
        return log_blob_events(self.clients["eastus"].get_container_client(self.container), "eastus", path,
                               azurite_port=self.azurite.port)

    def blob_names(self, account: str) -> list[str]:
        cc = self.clients[account].get_container_client(self.container)
        return sorted(b.name for b in cc.list_blobs()) if cc.exists() else []

    def close(self) -> None:
        self.runtime.close()
        for client in self.clients.values():
            try:
                client.delete_container(self.container)
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass


@pytest.fixture
def group_lake(azurite, request):
    lake = GroupLake(azurite, request.node.name)
    yield lake
    lake.close()


def batch(start: int, n: int) -> pa.Table:
    return pa.table({"id": list(range(start, start + n)), "amount": [float(i) for i in range(start, start + n)]})


def test_a_configuration_of_groups_alone_is_valid_and_names_follow_the_contract():
    config = parse_config({"groups": [{
        "name": "lake", "source": {"connection": "A", "container": "data", "prefix": "warehouse"},
        "replicas": [{"name": "westeu", "connection": "B", "container": "data"}]}]})
    member = config.group("lake").member("sales/orders")
    assert (member.name, member.source.name, member.source.path, [(r.name, r.path) for r in member.replicas],
            member.group) == ("lake:sales.orders", "primary", "warehouse/sales/orders",
                              [("westeu", "sales/orders")], "lake")
    assert config.tables == ()


def test_a_bad_group_is_refused_with_every_problem_named():
    with pytest.raises(ConfigError) as err:
        parse_config({"groups": [{"name": "a:b", "source": {"connection": "A", "container": "data", "prefix": "../x"},
                                  "replicas": [], "include": [], "colour": "red"}]})
    message = str(err.value)
    for expected in ("groups[0].colour: unknown field", "groups[0].name: expected a name",
                     "groups[0].source.prefix: expected a plain folder path",
                     "groups[0].replicas: expected a non-empty list", "groups[0].include: expected a non-empty list"):
        assert expected in message


def test_a_group_prefix_holding_a_configured_table_is_refused(azurite):
    environ = {"A": azurite.connection_string("eastus"), "B": azurite.connection_string("westeu")}
    config = parse_config({
        "tables": [{"name": "orders", "source": {"connection": "A", "container": "data", "path": "warehouse/orders"},
                    "replicas": [{"name": "westeu", "connection": "B", "container": "data", "path": "orders"}]}],
        "groups": [{"name": "lake", "source": {"connection": "A", "container": "data", "prefix": "warehouse"},
                    "replicas": [{"name": "westeu", "connection": "B", "container": "drlake"}]}]})
    with pytest.raises(ConfigError, match=r"tables\[0\]\.source: the source data/warehouse/orders is nested with "
                                          r"groups\[0\]\.source"):
        ReplicationRuntime(config, environ)


def test_an_event_for_a_table_not_seen_before_starts_it_and_others_under_the_prefix_are_ignored(group_lake):
    lake = group_lake
    lake.write("sales/orders", batch(0, 5))
    lake.write("sales/orders", batch(5, 5))
    lake.write("tmp/scratch", batch(0, 3))
    assert lake.runtime.tables() == []
    results = [handle_storage_event(lake.runtime, e) for e in lake.events("sales/orders")]
    assert [(r.disposition, r.table, r.version) for r in results] == \
        [(EventDisposition.HANDLED, lake.name("sales/orders"), 0), (EventDisposition.HANDLED, lake.name("sales/orders"), 1)]
    for account in ("westeu", "seasia"):
        assert (lake.version(account, "sales/orders"), lake.read(account, "sales/orders")) == \
            (1, lake.read("eastus", "sales/orders"))
    assert [t.name for t in lake.runtime.tables()] == [lake.name("sales/orders")]
    # An excluded table's commit and a member's data file are under the prefix: ignored, nothing written.
    before = {a: lake.blob_names(a) for a in ("westeu", "seasia")}
    excluded = lake.events("tmp/scratch")[0]
    data_file = next(n for n in lake.blob_names("eastus") if n.startswith("warehouse/sales/orders/part-"))
    data_event = blob_created_event("eastus", lake.container, data_file, size=1, etag="0x1",
                                    azurite_port=lake.azurite.port)
    assert [handle_storage_event(lake.runtime, e).disposition for e in (excluded, data_event)] == \
        [EventDisposition.IGNORED, EventDisposition.IGNORED]
    assert {a: lake.blob_names(a) for a in ("westeu", "seasia")} == before
    assert not any("tmp/" in n for a in ("westeu", "seasia") for n in lake.blob_names(a))


def test_the_lag_check_sweep_finds_tables_whose_events_were_lost_and_reports_a_dropped_one(group_lake):
    lake = group_lake
    for relative in ("sales/orders", "sales/customers", "hr.v2/people"):
        lake.write(relative, batch(0, 4))
        lake.write(relative, batch(4, 4))
    status = StatusStore(lake.runtime.table_service(), table_name="S" + uuid.uuid4().hex[:12])
    measured = check_replication(lake.runtime, status, None)
    names = [lake.name(r) for r in ("hr.v2/people", "sales/customers", "sales/orders")]
    assert sorted({(m.table, m.replica, m.status.value, m.replica_version) for m in measured}) == \
        sorted((n, a, "healthy", 1) for n in names for a in ("westeu", "seasia"))
    for relative in ("sales/orders", "sales/customers", "hr.v2/people"):
        assert lake.read("westeu", relative) == lake.read("eastus", relative) == lake.read("seasia", relative)
    # sales/customers is dropped on the primary: reported, its replicas kept as they were.
    kept = {a: [n for n in lake.blob_names(a) if "sales/customers/" in n] for a in ("westeu", "seasia")}
    doomed = [n for n in lake.blob_names("eastus") if n.startswith("warehouse/sales/customers/")]
    lake.clients["eastus"].get_container_client(lake.container).delete_blobs(*doomed)
    measured = check_replication(lake.runtime, status, None)
    assert sorted((m.table, m.replica, m.status.value) for m in measured) == sorted(
        [(lake.name("sales/customers"), a, "dropped") for a in ("westeu", "seasia")]
        + [(n, a, "healthy") for n in names if n != lake.name("sales/customers") for a in ("westeu", "seasia")])
    rows_now = {(r.table, r.replica): r.status for r in status.list_rows(table=lake.name("sales/customers"))}
    assert rows_now == {(lake.name("sales/customers"), "westeu"): "dropped",
                        (lake.name("sales/customers"), "seasia"): "dropped"}
    assert {a: [n for n in lake.blob_names(a) if "sales/customers/" in n] for a in ("westeu", "seasia")} == kept


def test_a_group_table_is_found_by_name_from_a_fresh_process_even_with_dots_in_its_folders(group_lake):
    lake = group_lake
    lake.write("hr.v2/people", batch(0, 4))
    lake.write("hr/v2/people", batch(0, 2))  # the same name once '/' is written '.': the first found wins
    lake.write("sales/orders", batch(0, 4))
    check_replication(lake.runtime, StatusStore(lake.runtime.table_service(), table_name="S" + uuid.uuid4().hex[:12]),
                      None)
    # Two folders with one name: the first in name order holds it, the other is not replicated.
    assert [t.source.path for t in lake.runtime.tables()] == ["warehouse/hr.v2/people", "warehouse/sales/orders"]
    assert not any(n.startswith("dr/warehouse/hr/v2/") for n in lake.blob_names("westeu"))
    fresh = ReplicationRuntime(parse_config(lake.config_doc), lake.environ)
    try:
        table = fresh.table(lake.name("sales/orders"))
        assert (table.source.path, [r.path for r in table.replicas]) == \
            ("warehouse/sales/orders", ["dr/warehouse/sales/orders", "sales/orders"])
        with pytest.raises(KeyError):
            fresh.table(lake.name("sales/returns"))
        promote(fresh, lake.name("sales/orders"), "westeu", force=True)
        assert (fresh.topology(lake.name("sales/orders")).primary,
                fresh.topology(lake.name("sales/orders")).epoch) == ("westeu", 1)
        assert (fresh.table(lake.name("hr.v2/people")).source.path,
                fresh.topology(lake.name("hr.v2/people")).primary) == ("warehouse/hr.v2/people", "eastus")
    finally:
        fresh.close()


def commit_time(lake: GroupLake, relative: str, version: int) -> datetime:
    blob = f"{PREFIX['eastus']}/{relative}/_delta_log/{version:020d}.json"
    data = lake.clients["eastus"].get_blob_client(lake.container, blob).download_blob().readall()
    info = next(json.loads(line)["commitInfo"] for line in data.splitlines() if b'"commitInfo"' in line)
    return datetime.fromtimestamp(info["timestamp"] // 1000, timezone.utc) + timedelta(milliseconds=info["timestamp"] % 1000)


def test_the_group_recovery_point_is_just_before_the_oldest_missing_commit_and_alerts_once_per_crossing(
        azurite, request):
    with AlertSink() as sink:
        lake = GroupLake(azurite, request.node.name, rpo_threshold_seconds=60,
                         environ={"ALERT_TOPIC_ENDPOINT": sink.endpoint, "ALERT_TOPIC_KEY": "test-topic-key"})
        try:
            runtime, group = lake.runtime, lake.group
            status = StatusStore(runtime.table_service(), table_name="S" + uuid.uuid4().hex[:12])
            for relative in ("sales/orders", "sales/customers"):
                lake.write(relative, batch(0, 4))
            checked = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=5)
            check_replication(runtime, status, runtime.alert_publisher(), now=checked)
            assert sorted((p.replica, p.recovery_point, p.tables, p.tables_behind)
                          for p, _ in runtime.group_status().rows(group)) == \
                [("seasia", checked, 2, 0), ("westeu", checked, 2, 0)]
            assert sink.events == []
            # orders' version 1 is not replicated yet (the events are lost, the check does not heal).
            lake.write("sales/orders", batch(4, 4))
            missing = commit_time(lake, "sales/orders", 1)
            later = missing + timedelta(minutes=5)
            for _ in range(2):
                check_replication(runtime, status, runtime.alert_publisher(), heal=False, now=later)
            point = missing - timedelta(milliseconds=1)
            assert sorted((p.replica, p.recovery_point, p.age_seconds, p.tables, p.tables_behind)
                          for p, _ in runtime.group_status().rows(group)) == \
                [(a, point, 300.001, 2, 1) for a in ("seasia", "westeu")]
            assert sorted((e["eventType"], e["subject"], e["data"]["recoveryPoint"], e["data"]["tablesBehind"])
                          for e in sink.events) == sorted(
                ("DeltaReplication.GroupRpoExceeded", f"groups/{group}/replicas/{a}",
                 point.isoformat(timespec="milliseconds").replace("+00:00", "Z"), 1) for a in ("westeu", "seasia"))
            body = stored_group_status(runtime, group)
            assert sorted((g["replica"], g["recoveryPointAgeSeconds"], g["alertState"]) for g in body["groups"]) == \
                [("seasia", 300.001, "rpo_exceeded"), ("westeu", 300.001, "rpo_exceeded")]
            # Healed: the point is the check's time again, and each location recovers once.
            check_replication(runtime, status, runtime.alert_publisher(), now=later)
            assert [e["eventType"] for e in sink.events[2:]] == ["DeltaReplication.Recovered"] * 2
            assert sorted((p.replica, p.recovery_point, p.tables_behind) for p, _ in runtime.group_status().rows(group)) \
                == [("seasia", later, 0), ("westeu", later, 0)]
        finally:
            lake.close()


def test_status_group_measures_every_table_and_the_recovery_point_now(group_lake):
    lake = group_lake
    for relative in ("sales/orders", "sales/customers"):
        lake.write(relative, batch(0, 4))
    check_replication(lake.runtime, StatusStore(lake.runtime.table_service(), table_name="S" + uuid.uuid4().hex[:12]),
                      None)
    lake.write("sales/customers", batch(4, 4))
    missing = commit_time(lake, "sales/customers", 1)
    result = run_cli(lake, "status", "--group", lake.group, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert sorted((r["table"], r["replica"], r["versionLag"], r["state"]) for r in doc["replicas"]) == sorted(
        [(lake.name("sales/customers"), a, 1, "lagging") for a in ("westeu", "seasia")]
        + [(lake.name("sales/orders"), a, 0, "healthy") for a in ("westeu", "seasia")])
    expected_point = (missing - timedelta(milliseconds=1)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert [(g["group"], g["replica"], g["recoveryPoint"], g["tables"], g["tablesBehind"]) for g in doc["groups"]] == \
        [(lake.group, "westeu", expected_point, 2, 1), (lake.group, "seasia", expected_point, 2, 1)]
    unknown = run_cli(lake, "status", "--group", "nosuch", "--json")
    assert (unknown.returncode, unknown.stdout) == (2, "")  # bad input (cli/outcome.py)
    assert f"group 'nosuch' is not configured (configured: {lake.group})" in unknown.stderr


def test_a_consistent_group_read_returns_each_table_as_of_the_locations_recovery_point(azurite, request):
    lake = GroupLake(azurite, request.node.name, routing={"default": ["westeu", "eastus"]})
    try:
        for relative in ("sales/orders", "sales/customers"):
            lake.write(relative, batch(0, 4))
        check_replication(lake.runtime, StatusStore(lake.runtime.table_service(),
                                                    table_name="S" + uuid.uuid4().hex[:12]), None)
        lake.write("sales/customers", batch(4, 4))  # customers v1
        lake.write("sales/orders", batch(4, 4))  # orders v1: its events are lost
        lake.write("sales/customers", batch(8, 4))  # customers v2
        lake.write("sales/returns", batch(0, 2))  # a table made after the point
        times = {k: commit_time(lake, r, v) for k, r, v in (("c1", "sales/customers", 1), ("o1", "sales/orders", 1),
                                                            ("c2", "sales/customers", 2))}
        assert times["c1"] < times["o1"] < times["c2"]  # (the scenario needs three distinct moments)
        for relative in ("sales/customers", "sales/returns"):
            for event in lake.events(relative):
                assert handle_storage_event(lake.runtime, event).disposition == EventDisposition.HANDLED
        point = (times["o1"] - timedelta(milliseconds=1)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        result = run_cli(lake, "endpoint", "--group", lake.group, "--consistent", "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert (doc["group"], doc["location"], doc["recoveryPoint"]) == (lake.group, "westeu", point)
        assert [(t["table"], t["location"], t["version"]) for t in doc["tables"]] == [
            (lake.name("sales/customers"), "westeu", 1), (lake.name("sales/orders"), "westeu", 0),
            (lake.name("sales/returns"), "westeu", None)]
        assert "no commit at or before the recovery point" in doc["tables"][2]["reason"]
        # open_table reads the same moment: customers at v1 on westeu, equal to the primary's v1.
        from shared.app.open_table import open_table

        opened = open_table(lake.name("sales/customers"), group=lake.group, consistent=True, runtime=lake.runtime)
        assert (opened.version(), rows(opened.to_pyarrow_table())) == (1, lake.read("eastus", "sales/customers", 1))
        refused = run_cli(lake, "endpoint", "--group", lake.group, "--json")
        assert refused.returncode == 2 and "endpoint --group G --consistent" in refused.stderr
    finally:
        lake.close()


def test_the_timer_and_the_http_routes_serve_a_group(azurite, request, monkeypatch):
    """check_replication_lag, GET /api/status?group= and GET tables/{table}/endpoint?group=&consistent=true
    with real azure.functions objects."""
    import azure.functions as func
    from azure.functions.timer import TimerRequest

    from functions.check_replication_lag import check_replication_lag
    from functions.replication_status import replication_status
    from functions.resolve_table import resolve_table
    from shared import runtime as runtime_module

    lake = GroupLake(azurite, request.node.name)
    try:
        monkeypatch.setenv("REPLICATION_CONFIG", json.dumps(lake.config_doc))
        for name, value in lake.environ.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("ALERT_TOPIC_ENDPOINT", raising=False)
        runtime_module.reset_runtime()
        lake.write("sales/orders", batch(0, 4))
        check_replication_lag(TimerRequest(past_due=False))
        assert lake.version("westeu", "sales/orders") == 0
        status = replication_status(func.HttpRequest("GET", "http://localhost/api/status",
                                                     params={"group": lake.group}, body=b""))
        body = json.loads(status.get_body())
        assert (status.status_code, sorted((r["table"], r["replica"], r["status"]) for r in body["replicas"]),
                sorted((g["replica"], g["tables"], g["tablesBehind"]) for g in body["groups"])) == \
            (200, [(lake.name("sales/orders"), "seasia", "healthy"), (lake.name("sales/orders"), "westeu", "healthy")],
             [("seasia", 1, 0), ("westeu", 1, 0)])
        unknown = replication_status(func.HttpRequest("GET", "http://localhost/api/status", params={"group": "x"},
                                                      body=b""))
        assert (unknown.status_code, json.loads(unknown.get_body())["groups"]) == (404, [lake.group])

        def endpoint(params):
            return resolve_table(func.HttpRequest("GET", "http://localhost/api/tables/x/endpoint", params=params,
                                                  route_params={"table": lake.name("sales/orders")}, body=b""))

        found = endpoint({"group": lake.group, "consistent": "true"})
        doc = json.loads(found.get_body())
        assert (found.status_code, doc["location"], [(t["table"], t["version"]) for t in doc["tables"]]) == \
            (200, "eastus", [(lake.name("sales/orders"), 0)])
        bad = endpoint({"group": lake.group, "consistent": "false", "min_version": "1"})
        assert bad.status_code == 400
        assert "needs consistent=true" in json.loads(bad.get_body())["error"]
        assert "'min_version' does not apply" in json.loads(bad.get_body())["error"]
    finally:
        runtime_module.reset_runtime()
        lake.close()


def test_an_idle_group_table_costs_the_lag_check_a_few_requests_and_a_new_commit_is_still_measured(azurite, request):
    from shared.storage.clients import RequestCounter

    class Recording(RequestCounter):
        def __init__(self):
            super().__init__()
            self.paths: list[tuple[str, str]] = []

        def __call__(self, request):
            super().__call__(request)
            self.paths.append((request.http_request.method, request.http_request.url.split("?")[0]))

    lake = GroupLake(azurite, request.node.name)
    counter = Recording()
    runtime = ReplicationRuntime(parse_config(lake.config_doc), lake.environ, counter=counter)
    relatives = [f"db{i % 3}/t{i}" for i in range(10)]
    try:
        for relative in relatives:
            lake.write(relative, batch(0, 2))
        status = StatusStore(runtime.table_service(), table_name="S" + uuid.uuid4().hex[:12])
        first = check_replication(runtime, status, None)
        assert sorted((m.status.value, m.replica_version) for m in first) == [("healthy", 0)] * 20
        counter.reset()
        del counter.paths[:]
        idle = check_replication(runtime, status, None)
        assert sorted((m.status.value, m.replica_version) for m in idle) == [("healthy", 0)] * 20
        # Per table: one request for the primary's next commit (a HEAD; through obstore a GET: it returns
        # the MD5 a HEAD lacks), one listing by the sweep, one status row per replica; per group: the
        # sweep's folders above the tables, one topology query, its points.
        next_commit = [(m, u) for m, u in counter.paths if "/eastus/" in u and u.endswith(f"/_delta_log/{1:020d}.json")]
        assert len(next_commit) == 10 and {m for m, _ in next_commit} == {
            "GET" if runtime.storage_client == "obstore" else "HEAD"}
        assert counter.count <= 3 * 10 * 2, counter.by_method
        checked = {m.checked_at for m in idle}
        assert len(checked) == 1  # (one instant for the run's idle tables)
        instant = checked.pop()
        rows = status.list_rows(table=lake.name("db2/t5"))
        assert sorted((r.replica, r.status, r.source_version, r.replica_version, r.version_lag, r.alert_state,
                       r.checked_at, r.caught_up_at) for r in rows) == \
            [(a, "healthy", 0, 0, 0, "ok", instant.isoformat(), instant.isoformat()) for a in ("seasia", "westeu")]
        # A commit nobody delivered an event for: that table alone is measured and healed again.
        lake.write("db1/t4", batch(2, 2))
        counter.reset()
        healed = check_replication(runtime, status, None)
        assert sorted((m.table, m.replica, m.replica_version) for m in healed if m.replica_version != 0) == \
            [(lake.name("db1/t4"), "seasia", 1), (lake.name("db1/t4"), "westeu", 1)]
        assert lake.read("westeu", "db1/t4") == lake.read("eastus", "db1/t4")
    finally:
        runtime.close()
        lake.close()
