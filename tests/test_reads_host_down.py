"""Reads survive the function app's table storage being down (issue 20, case 7).

The topology is read through a short-timeout client; when the host's table endpoint refuses or
black-holes, the resolver answers from the last topology this process read, flagged stale with the
reason, within a stated bound; with no topology ever read it answers 503 with the reason (a write
endpoint is never taken from configuration alone). The endpoint faults are real loopback sockets
in front of Azurite's table service (tests/support/endpoint_fault.py).
"""

from __future__ import annotations

import json
import re
import threading
import time

import azure.functions as func
import pytest

from functions.resolve_table import resolve_table as resolve_table_function
from shared import runtime as runtime_module
from shared.failover.promote import promote
from shared.reads.topology import TOPOLOGY_BOUND_SECONDS
from tests.support.endpoint_fault import EndpointFault
from tests.support.failover import failover_lake
from tests.support.lake import batch

# The topology read's bound, plus the data locations' probes on a busy 2-core machine.
ANSWER_BOUND_SECONDS = TOPOLOGY_BOUND_SECONDS + 3


@pytest.fixture
def app_settings(monkeypatch):
    def apply(lake):
        monkeypatch.setenv("REPLICATION_CONFIG", json.dumps(lake.config_doc))
        for name, value in lake.environ.items():
            monkeypatch.setenv(name, value)
        runtime_module.reset_runtime()
    yield apply
    runtime_module.reset_runtime()


def timed_get(table: str, params: dict) -> tuple[func.HttpResponse, float]:
    """Call the HTTP function in a thread; fail (not hang) when it does not answer within the bound."""
    box: dict = {}

    def call() -> None:
        try:
            box["response"] = resolve_table_function(func.HttpRequest(
                "GET", f"http://localhost:7071/api/tables/{table}/endpoint", params=params, body=b"",
                route_params={"table": table}))
        except BaseException as err:  # noqa: BLE001 - reported below
            box["error"] = err

    started = time.monotonic()
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout=ANSWER_BOUND_SECONDS + 30)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), f"no answer after {elapsed:.1f} s"
    assert "error" not in box, f"raised {box.get('error')!r} after {elapsed:.1f} s"
    return box["response"], elapsed


@pytest.fixture
def host_fault(azurite):
    fault = EndpointFault(azurite.table_port)
    yield fault
    fault.close()


def through(lake, fault: EndpointFault) -> None:
    """Point the function app's storage (AzureWebJobsStorage) table endpoint at the fault endpoint."""
    lake.environ["AzureWebJobsStorage"] = re.sub(r"TableEndpoint=http://127\.0\.0\.1:\d+/",
                                                 f"TableEndpoint=http://127.0.0.1:{fault.port}/",
                                                 lake.environ["AzureWebJobsStorage"])


def promoted_lake(azurite, request):
    """eastus -> westeu promoted (epoch 1); every location answers."""
    lake = failover_lake(azurite, request.node.name)
    lake.write(batch(0, 5), mode="overwrite")
    lake.write(batch(5, 5))
    lake.deliver_all(lake.events())
    promote(lake.runtime, lake.table_name, "westeu", timeout=60)
    return lake


@pytest.mark.parametrize("fault", ["refuse", "black_hole"])
def test_reads_answer_from_the_last_topology_when_the_host_table_endpoint_fails(
        azurite, request, app_settings, host_fault, fault):
    lake = promoted_lake(azurite, request)
    try:
        through(lake, host_fault)
        app_settings(lake)
        name = lake.table_name
        response, _ = timed_get(name, {})
        body = json.loads(response.get_body())
        assert response.status_code == 200
        assert (body["location"], body["epoch"], body["topology_stale"], body["topology_stale_reason"]) == \
            ("westeu", 1, False, None)
        getattr(host_fault, fault)()
        for params in ({}, {"max_staleness_seconds": "60", "min_version": "1"}, {"purpose": "write"}):
            response, elapsed = timed_get(name, params)
            body = json.loads(response.get_body())
            assert response.status_code == 200, body
            assert elapsed < ANSWER_BOUND_SECONDS, (params, elapsed)
            # The promote is remembered: never the configured source, and the answer says it is stale.
            assert body["epoch"] == 1 and body["topology_stale"] is True
            assert body["topology_stale_reason"].startswith(
                "the ReplicationTopology table in the function app's storage did not answer")
            assert (body["location"], body["version"]) == ("westeu", 1)
    finally:
        lake.close()


@pytest.mark.parametrize("fault", ["refuse", "black_hole"])
def test_with_no_topology_ever_read_the_answer_is_503_with_the_reason(
        azurite, request, app_settings, host_fault, fault):
    lake = promoted_lake(azurite, request)
    try:
        through(lake, host_fault)
        getattr(host_fault, fault)()
        app_settings(lake)  # a fresh host: it never read the topology
        for params in ({}, {"purpose": "write"}):
            response, elapsed = timed_get(lake.table_name, params)
            body = json.loads(response.get_body())
            assert response.status_code == 503 and response.mimetype == "application/json"
            assert elapsed < ANSWER_BOUND_SECONDS, (params, elapsed)
            assert body["reason"] == "TopologyUnavailable"
            assert "has not read it before" in body["error"] and "a promotion may have happened" in body["error"]
            assert "AccountKey" not in response.get_body().decode()
    finally:
        lake.close()


def unseen_promote(azurite, request, app_settings, host_fault):
    """The app reads the topology (epoch 0, eastus), then another process promotes westeu (a
    planned promote: eastus is fenced) and the host's table endpoint goes down: the app never
    read the promote."""
    lake = failover_lake(azurite, request.node.name)
    lake.write(batch(0, 5), mode="overwrite")
    lake.write(batch(5, 5))
    lake.deliver_all(lake.events())
    through(lake, host_fault)
    app_settings(lake)
    response, _ = timed_get(lake.table_name, {})
    body = json.loads(response.get_body())
    assert (response.status_code, body["location"], body["epoch"], body["topology_stale"]) == (200, "eastus", 0, False)
    result = promote(lake.runtime, lake.table_name, "westeu", timeout=60)
    assert (result.topology.epoch, result.fence_version) == (1, 2)
    host_fault.refuse()
    return lake


def test_a_stale_topology_gives_way_to_a_newer_promotion_marker(azurite, request, app_settings, host_fault):
    """Checker seed 10980: the remembered topology names the deposed primary; the marker the
    promote left beside the data names the new one, and the answer follows the marker."""
    lake = unseen_promote(azurite, request, app_settings, host_fault)
    try:
        for params in ({}, {"purpose": "write"}, {"region": "eastus"}):
            response, elapsed = timed_get(lake.table_name, params)
            body = json.loads(response.get_body())
            assert response.status_code == 200, body
            assert elapsed < ANSWER_BOUND_SECONDS, (params, elapsed)
            assert (body["location"], body["epoch"], body["version"], body["topology_stale"]) == \
                ("westeu", 1, 1, True), (params, body)
            assert "older than the promotion marker for epoch 1 found in " in body["topology_stale_reason"]
    finally:
        lake.close()


def test_a_stale_topology_naming_a_fenced_primary_is_503(azurite, request, app_settings, host_fault):
    """No marker survived (every marker write failed, or they were removed) but the primary the
    remembered topology names is fenced: it was deposed, so no location is named."""
    lake = unseen_promote(azurite, request, app_settings, host_fault)
    try:
        for account in ("eastus", "westeu", "seasia"):
            container = lake.clients[account].get_container_client(lake.container)
            markers = [b.name for b in container.list_blobs(name_starts_with="_quarantine/")]
            for name in markers:
                container.delete_blob(name)
            assert all("/topology/" in n for n in markers)
        for params in ({}, {"purpose": "write"}):
            response, elapsed = timed_get(lake.table_name, params)
            body = json.loads(response.get_body())
            assert (response.status_code, body["reason"]) == (503, "TopologyUnavailable"), body
            assert "eastus, the primary it names, is fenced at version 2" in body["error"]
    finally:
        lake.close()
