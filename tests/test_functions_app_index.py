"""function_app indexes every function with the contract's names, triggers and bindings."""

from azure.functions.decorators.core import AuthLevel, BindingDirection
from azure.functions.decorators.http import HttpMethod

import function_app

_INDEXED = None


def indexed() -> dict:
    # get_functions() re-registers on every call, so index once per run.
    global _INDEXED
    if _INDEXED is None:
        _INDEXED = {f.get_function_name(): f for f in function_app.app.get_functions()}
    return _INDEXED


def bindings(name: str) -> list[dict]:
    return [b.get_dict_repr() for b in indexed()[name].get_bindings()]


def test_function_names_are_module_names():
    for name, function in indexed().items():
        assert function.get_user_function().__module__ == f"functions.{name}"
        assert function.get_user_function().__name__ == name


def test_replicate_commit_is_an_event_grid_trigger():
    assert bindings("replicate_commit") == [{"direction": BindingDirection.IN, "type": "eventGridTrigger", "name": "event"}]


def test_check_replication_lag_runs_on_the_lag_check_schedule():
    assert bindings("check_replication_lag") == [{"direction": BindingDirection.IN, "type": "timerTrigger",
                                                 "name": "timer", "schedule": "%LAG_CHECK_SCHEDULE%",
                                                 "runOnStartup": False}]


def test_replication_status_is_http_get_status_with_function_auth():
    trigger, output = bindings("replication_status")
    assert trigger == {"direction": BindingDirection.IN, "type": "httpTrigger", "name": "req",
                       "methods": [HttpMethod.GET], "authLevel": AuthLevel.FUNCTION, "route": "status"}
    assert output["type"] == "http"


def test_maintenance_timers_run_on_their_schedules():
    assert bindings("maintain_snapshots")[0]["schedule"] == "%SNAPSHOT_SCHEDULE%"
    assert bindings("apply_retention")[0]["schedule"] == "%RETENTION_SCHEDULE%"
    assert {b["type"] for name in ("maintain_snapshots", "apply_retention") for b in bindings(name)} == {"timerTrigger"}


def test_resolve_table_is_http_get_table_endpoint_with_function_auth():
    trigger, output = bindings("resolve_table")
    assert trigger == {"direction": BindingDirection.IN, "type": "httpTrigger", "name": "req",
                       "methods": [HttpMethod.GET], "authLevel": AuthLevel.FUNCTION,
                       "route": "tables/{table}/endpoint"}
    assert output["type"] == "http"


def test_consolidate_regions_runs_on_the_consolidation_schedule():
    assert bindings("consolidate_regions") == [{"direction": BindingDirection.IN, "type": "timerTrigger",
                                               "name": "timer", "schedule": "%CONSOLIDATION_SCHEDULE%",
                                               "runOnStartup": False}]


def test_the_index_is_the_one_the_deploy_check_expects():
    # scripts/deploy_check.py compares the deployed app's index with this file, in a clean environment.
    import json
    from pathlib import Path

    expected = json.loads((Path(__file__).resolve().parent.parent / "scripts" / "function_index.json").read_text())
    assert {name: json.loads(f.get_function_json())["bindings"] for name, f in indexed().items()} == expected
