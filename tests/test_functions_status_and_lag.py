"""check_replication_lag and replication_status called with real azure.functions objects."""

from __future__ import annotations

import json

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

from functions.check_replication_lag import check_replication_lag
from functions.replication_status import replication_status
from shared import runtime as runtime_module
from tests.support.lake import batch


@pytest.fixture
def app_settings(lake, monkeypatch):
    monkeypatch.setenv("REPLICATION_CONFIG", json.dumps(lake.config_doc))
    for name, value in lake.environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ALERT_TOPIC_ENDPOINT", raising=False)
    runtime_module.reset_runtime()
    yield lake
    runtime_module.reset_runtime()


def get_status(params: dict) -> func.HttpResponse:
    return replication_status(func.HttpRequest("GET", "http://localhost:7071/api/status", params=params, body=b""))


def test_timer_heals_and_status_endpoint_reports_rows(app_settings):
    lake = app_settings
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.write(batch(5, 5), partition_by=["region"])
    check_replication_lag(TimerRequest(past_due=False))
    assert lake.head("westeu") == lake.head("seasia") == 1
    response = get_status({"table": "sales"})
    assert response.status_code == 200 and response.mimetype == "application/json"
    rows = {r["replica"]: r for r in json.loads(response.get_body())["replicas"]}
    assert set(rows) == {"westeu", "seasia"}
    assert rows["westeu"] | {"checkedAt": None, "detail": None} == {
        "table": "sales", "replica": "westeu", "sourceVersion": 1, "replicaVersion": 1, "versionLag": 0,
        "lagSeconds": 0.0, "status": "healthy", "checkedAt": None, "detail": None}
    assert json.loads(get_status({}).get_body())["replicas"]


def test_status_for_an_unknown_table_is_404_naming_the_tables(app_settings):
    response = get_status({"table": "nope"})
    assert response.status_code == 404
    assert json.loads(response.get_body())["tables"] == ["sales"]


def test_the_status_endpoint_reports_configured_tables_only(app_settings):
    """A row of a table this app does not configure (removed from the configuration, or another
    app's in shared storage) is not reported: the app neither heals nor alerts on it."""
    from datetime import datetime, timezone

    from shared.health.lag import ReplicaHealth, ReplicaLag

    lake = app_settings
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    check_replication_lag(TimerRequest(past_due=False))
    runtime = runtime_module.get_runtime()
    stray = ReplicaLag(table="removed-table", replica="westeu", source_version=3, replica_version=3,
                       version_lag=0, lag_seconds=0.0, status=ReplicaHealth.HEALTHY,
                       checked_at=datetime.now(timezone.utc), detail="")
    runtime.status_store().put_row(stray, alert_state="ok")
    try:
        rows = json.loads(get_status({}).get_body())["replicas"]
        assert {r["table"] for r in rows} == {"sales"}
    finally:
        runtime.status_store()._table.delete_entity("removed-table", "westeu")
