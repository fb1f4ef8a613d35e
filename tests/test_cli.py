"""The operator CLI on real Azurite: status --json, sync on an empty replica, verify, events, relay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.lake import Lake, batch, build_rich_table

REPO = Path(__file__).resolve().parent.parent


def run_cli(lake: Lake | None, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_STORAGE") and not k.startswith("REPLICATION_CONFIG")}
    if lake is not None:
        env.update(lake.environ)
        env["REPLICATION_CONFIG"] = json.dumps(lake.config_doc)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_every_command_has_help():
    for command in ("status", "sync", "verify", "events", "relay", "cost", "endpoint", "dev", "consolidate"):
        result = run_cli(None, command, "--help")
        assert result.returncode == 0 and "usage: python -m cli " + command in result.stdout


def test_every_command_has_timeout_exit_codes_and_help_on_every_option():
    import argparse

    from cli.__main__ import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"status", "sync", "verify", "events", "relay", "cost", "endpoint", "dev",
                                "consolidate", "promote", "rejoin", "quarantine", "topology", "drill"}
    for name, command in [("python -m cli", parser), *sub.choices.items()]:
        undocumented = [a.dest for a in command._actions
                        if a.help in (None, "") and not isinstance(a, argparse._SubParsersAction)]
        assert undocumented == [], (name, undocumented)
        assert "exit codes:" in command.format_help() and "4  the command did not finish within --timeout" in \
            command.format_help(), name
        if command is not parser:
            assert any("--timeout" in a.option_strings for a in command._actions), name


def test_status_json_reports_versions_lag_and_state(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.deliver_all(lake.events())
    for i in range(1, 4):
        lake.write(batch(i * 5, 5), partition_by=["region"])
    result = run_cli(lake, "status", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["replica"]: r for r in json.loads(result.stdout)["replicas"]}
    assert rows["westeu"]["sourceVersion"] == 3 and rows["westeu"]["replicaVersion"] == 0
    assert rows["westeu"]["versionLag"] == 3 and rows["westeu"]["state"] == "lagging"
    assert rows["westeu"]["lagSeconds"] > 0


def test_sync_seeds_an_empty_replica_with_progress(lake):
    build_rich_table(lake, appends=6)
    result = run_cli(lake, "sync")
    assert result.returncode == 0, result.stderr
    assert "westeu: replicated vNone -> v" in result.stdout
    assert " files" in result.stderr  # the progress bar
    lake.assert_replicas_equal(every_version=False)


def test_verify_passes_then_names_a_deleted_file_and_a_tampered_commit(lake):
    build_rich_table(lake, appends=4)
    lake.deliver_all(lake.events())
    ok = run_cli(lake, "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    data_file = next(n for n in lake.blobs("westeu") if n.endswith(".parquet") and "_delta_log" not in n)
    lake.clients["westeu"].get_blob_client(lake.container, data_file).delete_blob()
    tampered = f"{lake.table_path}/_delta_log/{2:020d}.json"
    blob = lake.clients["seasia"].get_blob_client(lake.container, tampered)
    blob.upload_blob(blob.download_blob().readall().replace(b'"', b"'", 1)[:-1] + b"\n", overwrite=True)
    bad = run_cli(lake, "verify", "--no-read")
    assert bad.returncode == 1
    relative = data_file[len(lake.table_path) + 1:]
    assert f"file missing on replica: {relative}" in bad.stdout
    assert f"sales/seasia version 2: commit differs from the primary's: _delta_log/{2:020d}.json" in bad.stdout


def test_events_prints_filters_that_match_the_deployment_template():
    env = {"REPLICATION_CONFIG_FILE": str(REPO / "replication.example.json"),
           "EASTUS_STORAGE__blobServiceUri": "https://contosoeastus.blob.core.windows.net",
           "WESTEU_STORAGE__blobServiceUri": "https://contosowesteu.blob.core.windows.net",
           "SEASIA_STORAGE__blobServiceUri": "https://contososeasia.blob.core.windows.net"}
    result = run_cli(None, "events", env_extra=env)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    params = json.loads((REPO / "infra" / "main.parameters.example.json").read_text())["parameters"]
    assert params["eventSubscriptions"]["value"] == printed
    assert params["replicationConfig"]["value"] == json.loads((REPO / "replication.example.json").read_text())
    # Every location that can become primary has a subscription (failover needs no redeploy).
    assert [a["account"] for a in printed["sourceAccounts"]] == ["contosoeastus", "contosowesteu", "contososeasia"]
    (sub,) = printed["sourceAccounts"][0]["subscriptions"]
    assert sub["filter"]["subjectBeginsWith"] == "/blobServices/default/containers/lake/blobs/delta/sales/_delta_log/"
    assert set(sub["filter"]["includedEventTypes"]) == {"Microsoft.Storage.BlobCreated", "Microsoft.Storage.BlobRenamed"}
    for account in printed["sourceAccounts"]:
        (each,) = account["subscriptions"]
        # The replicator's own writes (tagged request ids) raise no delivery.
        assert {"operatorType": "StringNotBeginsWith", "key": "data.clientRequestId",
                "values": ["delta-replication-"]} in each["filter"]["advancedFilters"]
    # The template passes these filters through unchanged.
    template = (REPO / "infra" / "subscriptions.bicep").read_text()
    for field in ("includedEventTypes", "subjectBeginsWith", "advancedFilters"):
        assert f"{field}: sub.filter.{field}" in template
    assert "deadLetterDestination" in template and "retryPolicy" in template


def test_a_missing_or_malformed_settings_file_is_a_clear_error(tmp_path):
    missing = run_cli(None, "--settings", str(tmp_path / "nope.json"), "status")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"--settings {tmp_path / 'nope.json'}: cannot read it (No such file or directory)" in missing.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    malformed = run_cli(None, "--settings", str(bad), "status")
    assert malformed.returncode == 2 and "not a Functions local.settings.json" in malformed.stderr


def test_a_cli_command_builds_its_stores_on_the_sdk_so_its_deadline_bounds_every_request(lake):
    """While a CLI command runs, a runtime it builds sends blob requests through the SDK (`requests`, which
    cli/deadline.py caps and names); object_store's 60 s timeouts and retries would outlive the command. The
    function app's runtimes, and any after the command, keep object_store."""
    from cli.deadline import deactivate, set_deadline
    from shared.config.parse import parse_config
    from shared.runtime import ReplicationRuntime
    from shared.storage.object_table_store import ObjectTableStore

    environ = {**lake.environ, "STORAGE_CLIENT": "obstore"}
    set_deadline(5)
    try:
        during = ReplicationRuntime(parse_config(lake.config_doc), environ)
    finally:
        deactivate()
    after = ReplicationRuntime(parse_config(lake.config_doc), environ)
    try:
        assert (during.storage_client, after.storage_client) == ("sdk", "obstore")
        assert not isinstance(during.replicators["sales"].source_store, ObjectTableStore)
        assert isinstance(after.replicators["sales"].source_store, ObjectTableStore)
    finally:
        during.close()
        after.close()


def test_an_abandoned_workers_requests_stay_capped_at_its_commands_deadline_after_the_command():
    """A command that timed out leaves its worker running (a daemon); once the command is over, that worker's
    requests are still capped at the command's deadline (they fail at once), never left to the SDK's own
    timeouts: with a service that accepts and never answers, they would hang."""
    import threading
    import time

    import pytest
    import requests

    from cli.deadline import CommandTimedOut, deactivate, run_bounded
    from tests.support.outage import BlackHole

    hole = BlackHole()
    release, finished = threading.Event(), threading.Event()
    outcome: dict = {}

    def command() -> None:
        release.wait(10)  # still running when the command's 0.5 s are up
        started = time.monotonic()
        try:
            requests.get(f"http://127.0.0.1:{hole.port}/account/container", timeout=None)
        except requests.RequestException as err:
            outcome["error"] = type(err).__name__
        outcome["seconds"] = time.monotonic() - started
        finished.set()

    try:
        with pytest.raises(CommandTimedOut):
            run_bounded("status", 0.5, command)
        deactivate()  # the command is over
        release.set()
        assert finished.wait(10), "the abandoned worker's request was not capped"
        assert outcome["error"] in ("ReadTimeout", "ConnectTimeout", "ConnectionError") and outcome["seconds"] < 2
    finally:
        release.set()
        hole.close()
