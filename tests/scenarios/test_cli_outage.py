"""Every CLI command in an outage: refused, black-holed, 403 and 404, at the source, a replica and the
host storage. Each answers within its --timeout with a documented exit code and one line saying what
failed and where; never a traceback.

Commands run in-process (`cli.__main__.main`), one after another, each with its own environment and
captured output; a command abandoned at its deadline keeps a daemon thread, whose late output is
dropped by the capture (only threads started by the current command write into it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import threading
import time

import pytest

from cli.__main__ import main
from shared.runtime import reset_runtime
from tests.support.failover import failover_lake
from tests.support.lake import batch
from tests.support.outage import BlackHole, redirect, refusing_port, wrong_key

TIMEOUT = 3.0
SLACK = 3.0  # argument parsing, building the runtime, joining the worker: the bound is TIMEOUT + SLACK
SETTING = {"source": "EASTUS_STORAGE", "replica": "WESTEU_STORAGE", "host": "AzureWebJobsStorage"}
_TQDM = re.compile(r"\[\d\d:\d\d")


class _Capture(io.StringIO):
    """Output of threads started after it was made (and the main thread); abandoned workers are ignored."""

    def __init__(self) -> None:
        super().__init__()
        # Thread objects, not idents: the system reuses the ident of a thread that has ended.
        self._before = set(threading.enumerate()) - {threading.main_thread()}

    def write(self, text: str) -> int:
        if threading.current_thread() in self._before:
            return len(text)
        return super().write(text)

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def environment(values: dict):
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.endswith("_STORAGE") or key.startswith("REPLICATION_CONFIG") or key in (
                "AzureWebJobsStorage", "STATUS_CONNECTION"):
            del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run(argv: list[str], env: dict) -> tuple[int, str, str, float]:
    out, err = _Capture(), _Capture()
    started = time.monotonic()
    with environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    elapsed = time.monotonic() - started
    reset_runtime()  # the relay's in-process delivery builds the host runtime from this environment
    return code, out.getvalue(), err.getvalue(), elapsed


def commands(table: str, tmp_path) -> list[list[str]]:
    t = ["--timeout", str(TIMEOUT)]
    return [
        ["status", *t], ["status", "--json", *t], ["sync", "--quiet", *t], ["verify", "--quiet", *t],
        ["events", *t],
        ["relay", "--once", "--in-process", "--state", str(tmp_path / "relay.json"), *t],
        ["cost", *t], ["endpoint", "--table", table, *t], ["endpoint", "--table", table, "--purpose", "write", *t],
        ["promote", "--table", table, "--to", "westeu", *t],
        ["rejoin", "--table", table, "--location", "eastus", "--dry-run", *t],
        ["quarantine", "list", "--table", table, *t],
        ["quarantine", "replay", "--table", table, "--epoch", "1", "--dry-run", *t],
        ["consolidate", *t],
    ]


def break_endpoint(lake, where: str, failure: str, hole: BlackHole | None) -> tuple[dict, dict]:
    """(environment, configuration) with one endpoint failing one way."""
    env = dict(lake.environ)
    config = json.loads(json.dumps(lake.config_doc))
    setting = SETTING[where]
    if failure == "refused":
        env[setting] = redirect(env[setting], refusing_port())
    elif failure == "black-holed":
        env[setting] = redirect(env[setting], hole.port)
    elif failure == "403":
        env[setting] = wrong_key(env[setting])
    elif where == "host":  # 404: an account whose tables were never created (a new or wrong host account)
        env[setting] = lake.azurite.connection_string("westeu")
    else:  # 404: the container does not exist (a typo in the configuration)
        table = config["tables"][0]
        location = table["source"] if where == "source" else table["replicas"][0]
        location["container"] = "missing-" + lake.container[:40]
    env["REPLICATION_CONFIG"] = json.dumps(config)
    return env, config


@pytest.mark.parametrize("failure", ["refused", "black-holed", "403", "404"])
@pytest.mark.parametrize("where", ["source", "replica", "host"])
def test_every_command_answers_within_its_timeout_in_one_line(azurite, tmp_path, request, where, failure):
    lake = failover_lake(azurite, request.node.name)
    hole = BlackHole() if failure == "black-holed" else None
    try:
        lake.write(batch(0, 5), mode="overwrite")
        lake.write(batch(5, 5))
        lake.deliver_all(lake.events())
        env, _ = break_endpoint(lake, where, failure, hole)
        results = {}
        for argv in commands(lake.table_name, tmp_path):
            code, out, err, elapsed = run(argv, env)
            name = " ".join(a for a in argv if not a.startswith(("--timeout", "3.0", "/")))
            results[name] = code
            text = out + err
            assert "Traceback" not in text, (name, text)
            assert elapsed < TIMEOUT + SLACK, (name, elapsed, text)
            assert code in (0, 1, 2, 3, 4), (name, code, text)
            errors = [line for line in err.splitlines() if line.strip() and not _TQDM.search(line)]
            if code in (2, 3, 4):
                assert len(errors) == 1 and errors[0].startswith("error: "), (name, code, err)
                assert SETTING[where] in errors[0] or where == "host" and failure == "404", (name, errors[0])
            else:
                assert len(errors) <= 1, (name, code, err)
            if code == 1 and not errors:
                assert out.strip(), (name, "exit 1 with no reason")
        # What an operator must see, not only that it answered:
        assert results["events"] == 0
        if where == "host" and failure != "404":
            for name in ("status", "sync --quiet", "verify --quiet", "endpoint --table {0} --purpose write",
                         "promote --table {0} --to westeu"):
                assert results[name.format(lake.table_name)] in (3, 4), (name, results)
        if where == "source" and failure == "404":
            code, out, _, _ = run(["status", "--timeout", str(TIMEOUT)], env)
            assert code == 1 and "source holds no Delta log at EASTUS_STORAGE:missing-" in out
        if failure == "403" and where != "host":
            code, out, _, _ = run(["status", "--timeout", str(TIMEOUT)], env)
            assert code == 1 and "access denied" in out and "unreachable" not in out, out
    finally:
        if hole is not None:
            hole.close()
        lake.close()


def test_after_a_promotion_no_command_answers_from_configuration_and_unknown_names_list_the_known(azurite, request):
    lake = failover_lake(azurite, request.node.name)
    try:
        lake.write(batch(0, 5), mode="overwrite")
        lake.deliver_all(lake.events())
        env = {**lake.environ, "REPLICATION_CONFIG": json.dumps(lake.config_doc)}
        t = lake.table_name
        code, out, err, _ = run(["promote", "--table", t, "--to", "westeu", "--timeout", "30"], env)
        assert code == 0, out + err

        # The function app's storage is gone from the settings: the configured source (eastus) is fenced now.
        without_host = {k: v for k, v in env.items() if k != "AzureWebJobsStorage"}
        for argv in (["endpoint", "--table", t, "--purpose", "write"], ["status"], ["sync", "--quiet"],
                     ["promote", "--table", t, "--to", "eastus"]):
            code, out, err, _ = run([*argv, "--timeout", "10"], without_host)
            assert code == 3, (argv, code, out, err)
            assert out == "" and err.startswith("error: cannot read the topology: ") and "eastus" not in out, argv
            assert "AzureWebJobsStorage" in err and err.count("\n") == 1, err
        code, out, _, _ = run(["endpoint", "--table", t, "--purpose", "write", "--timeout", "10"], env)
        assert code == 0 and out.startswith(f"{t}: westeu (")

        code, out, err, _ = run(["rejoin", "--table", t, "--location", "primary", "--dry-run"], env)
        assert code == 2 and out == ""
        assert err == (f"error: --location 'primary': table {t} has no such location (its locations: eastus, "
                       "westeu, seasia); nothing was changed\n")
        code, _, err, _ = run(["promote", "--table", t, "--to", "nowhere"], env)
        assert code == 2 and "(its locations: eastus, westeu, seasia)" in err
    finally:
        lake.close()


def test_a_typo_in_the_source_path_is_an_error_in_status_and_sync_never_up_to_date(azurite, request):
    lake = failover_lake(azurite, request.node.name)
    try:
        lake.write(batch(0, 5), mode="overwrite")
        lake.deliver_all(lake.events())
        config = json.loads(json.dumps(lake.config_doc))
        config["tables"][0]["source"]["path"] = "delta/salse"
        env = {**lake.environ, "REPLICATION_CONFIG": json.dumps(config)}
        where = f"EASTUS_STORAGE:{lake.container}/delta/salse/_delta_log"
        code, out, err, _ = run(["status", "--timeout", "20"], env)
        assert code == 1 and err == ""
        rows = [line for line in out.splitlines() if line.startswith(lake.table_name)]
        assert len(rows) == 2 and all(f"error  source holds no Delta log at {where};" in r for r in rows), out
        code, out, _, _ = run(["status", "--json", "--timeout", "20"], env)
        assert code == 1 and {r["state"] for r in json.loads(out)["replicas"]} == {"error"}
        code, out, _, _ = run(["sync", "--quiet", "--timeout", "20"], env)
        assert code == 1 and f"{lake.table_name}: error: source holds no Delta log at {where}" in out
        assert "up_to_date" not in out
    finally:
        lake.close()
