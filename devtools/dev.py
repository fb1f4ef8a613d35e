"""Local development in one command: Azurite with every configured account, settings, relay.

`python -m cli dev` (behind `bash scripts/dev.sh`) does, in order:

1. takes `<state>/dev.lock` (a second concurrent start says which PID holds it and exits 1);
2. generates account keys once (`secrets`) into `<state>/keys.json`, so restarts keep the data;
3. starts one Azurite (blob, queue, table) with every account the configuration names, its
   data in `<state>/azurite/`, on fixed ports (10000-10002) unless taken;
4. writes `local.settings.json` from `local.settings.json.example` with the connection
   strings, never overwriting a file the user edited without asking;
5. creates the containers, starts the relay (`python -m cli relay`: POSTs to `func start` when
   it answers, in-process otherwise) with its position in `<state>/relay-state.json`;
6. prints the deltalake snippet, the HTTP endpoints and how to stop, then `ready: ...`.

Ctrl-C or SIGTERM stops what it started (the relay, then Azurite), each by its PID.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devtools.azurite import DEVSTORE_ACCOUNT, DEVSTORE_KEY, REPO_ROOT, AzuriteProcess
from devtools.dev_settings import (
    SETTINGS_EXAMPLE,
    DevError,
    account_for,
    account_keys,
    choose_ports,
    connection_string,
    load_settings_doc,
    read_json,
    storage_options,
    tty_ask,
    write_private,
    write_settings,
)

AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite"
HOST_STORAGE = "AzureWebJobsStorage"
READY_PREFIX = "ready:"
SNIPPET_BEGIN = "# ---- write to "
SNIPPET_END = "# ---- end ----"


@dataclass(frozen=True)
class DevOptions:
    state_dir: Path
    settings_file: Path
    ports: dict  # service -> explicit port, or None
    functions_url: str
    relay_interval: float
    startup_timeout: float = 120.0  # `dev --timeout`: how long Azurite may take to listen


def _say(text: str = "") -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- the lock


class DevLock:
    """An exclusive `flock` on `<state>/dev.lock` holding the owner's PID; freed by the kernel on any exit."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "dev.lock"
        self._fh = None

    def acquire(self) -> None:
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid = fh.read().strip() or "?"
            fh.close()
            raise DevError(
                f"a dev environment is already running from {self.path.parent} (PID {pid}); "
                f"use that one, or stop it with Ctrl-C in its terminal (or `kill -INT {pid}`) and start again"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.seek(0)
            self._fh.truncate()
            self._fh.close()  # closing drops the flock
            self._fh = None


# ---------------------------------------------------------------- processes


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_leftovers(state_dir: Path, children: dict) -> list[str]:
    """Stop processes a previous run started and could not stop (it was SIGKILLed), by PID.

    A PID counts as ours only if its command line names this state directory, so a
    recycled PID is never signalled.
    """
    stopped = []
    marker = str(state_dir)
    for role, pid in children.items():
        if not isinstance(pid, int) or not _alive(pid) or marker not in _cmdline(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        stopped.append(f"{role} (PID {pid})")
    return stopped


def start_azurite(location: Path, keys: dict, ports: dict, timeout: float = 120.0) -> subprocess.Popen:
    if not AZURITE_BIN.exists():
        raise DevError(f"Azurite is not installed at {AZURITE_BIN}; run `bash scripts/setup.sh` (or `npm ci`)")
    location.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["AZURITE_ACCOUNTS"] = ";".join(f"{a}:{k}" for a, k in keys.items())
    args = [str(AZURITE_BIN), "--location", str(location), "--silent", "--disableTelemetry",
            "--skipApiVersionCheck", "--loose"]
    for service, port in ports.items():
        args += [f"--{service}Host", "127.0.0.1", f"--{service}Port", str(port)]
    with open(location / "azurite.log", "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    try:
        _wait_listening(proc, location, list(ports.values()), timeout)
    except BaseException:  # including Ctrl-C while it boots: never leave it running
        _stop(proc)
        raise
    return proc


def _wait_listening(proc: subprocess.Popen, location: Path, pending: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pending:
        if proc.poll() is not None:
            raise DevError(f"Azurite exited with {proc.returncode}; see {location / 'azurite.log'}")
        if time.monotonic() > deadline:
            raise DevError(f"Azurite did not listen on {pending} within {timeout:g} s (--timeout); see "
                           f"{location / 'azurite.log'}")
        try:
            with socket.create_connection(("127.0.0.1", pending[0]), timeout=0.5):
                pending.pop(0)
        except OSError:
            time.sleep(0.1)


def _stop(proc: subprocess.Popen | None) -> None:
    AzuriteProcess._stop_one(proc)  # SIGTERM to the process group it leads (its own session), then SIGKILL


def create_containers(tables, connection_strings: dict) -> list[str]:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    wanted = []
    for table in tables:
        for loc in (table.source, *table.replicas):
            wanted.append((loc.connection, loc.container))
        if table.snapshots is not None:
            wanted.append((table.replica(table.snapshots.replica).connection, table.snapshots.container))
    created = []
    for connection, container in dict.fromkeys(wanted):
        client = BlobServiceClient.from_connection_string(connection_strings[connection])
        try:
            client.create_container(container)
        except ResourceExistsError:
            pass
        created.append(f"{client.account_name}/{container}")
        client.close()
    return created


def _functions_answer(url: str) -> bool:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 80), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- what it prints


def snippet(table, account: str, options: dict) -> str:
    """Copy-pasteable Python that appends to the table's primary and prints its version."""
    uri = f"az://{table.source.container}/{table.source.path}"
    return "\n".join([
        f"{SNIPPET_BEGIN}{table.name} (primary: {account}) ----",
        "import pyarrow as pa",
        "from deltalake import DeltaTable, write_deltalake",
        f"uri = {uri!r}",
        f"storage_options = {json.dumps(options)}",
        'write_deltalake(uri, pa.table({"id": [1, 2, 3], "amount": [9.5, 20.0, 3.25]}), mode="append",',
        "                storage_options=storage_options)",
        f'print("{table.name} is at version", DeltaTable(uri, storage_options=storage_options).version())',
        SNIPPET_END,
    ])


# ---------------------------------------------------------------- the command


def run(opts: DevOptions) -> int:
    """Start the environment, print how to use it, wait for Ctrl-C/SIGTERM, stop what it started."""
    state_dir = opts.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = DevLock(state_dir)
    try:
        lock.acquire()
    except DevError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM unwinds like Ctrl-C: the finally stops the children
    # Started in the background by a shell without job control (`nohup ... &`, some CI runners),
    # Python inherits SIGINT as ignored and would never see Ctrl-C or `kill -INT`: take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started: dict[str, subprocess.Popen] = {}
    state_path = state_dir / "dev.json"
    try:
        state = read_json(state_path, {})
        for line in stop_leftovers(state_dir, state.get("children", {})):
            _say(f"dev: stopped {line} left over from a previous run")
        state["children"] = {}
        try:
            settings_path = _start(opts, state_dir, state, state_path, started)
        except DevError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            return 1
        _say(f"{READY_PREFIX} dev environment running (PID {os.getpid()}; Azurite PID {started['azurite'].pid}, "
             f"relay PID {started['relay'].pid}); settings {settings_path}")
        while True:
            for name, proc in started.items():
                if proc.poll() is not None:
                    print(f"error: {name} (PID {proc.pid}) exited with {proc.returncode}; stopping. "
                          f"Logs: {state_dir / 'azurite' / 'azurite.log'} (Azurite), this terminal (relay)",
                          file=sys.stderr, flush=True)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        _say("\ndev: stopping")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for name in ("relay", "azurite"):
            _stop(started.get(name))
        if started:
            state = read_json(state_path, {})
            state["children"] = {}
            write_private(state_path, json.dumps(state, indent=1) + "\n")
        lock.release()
        if started:
            _say(f"dev: stopped the relay and Azurite; data kept in {state_dir}")


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _start(opts: DevOptions, state_dir: Path, state: dict, state_path: Path, started: dict) -> Path:
    """Start Azurite and the relay (each recorded in `started` the moment it exists) and print the guide."""
    from shared.config.settings import CONFIG_FILE_SETTING, CONFIG_SETTING, load_config
    from shared.errors import ConfigError

    template = json.loads(SETTINGS_EXAMPLE.read_text())["Values"]
    current = load_settings_doc(opts.settings_file)
    source_values = dict(template)
    if current is not None and (current["Values"].get(CONFIG_SETTING) or current["Values"].get(CONFIG_FILE_SETTING)):
        for name in (CONFIG_SETTING, CONFIG_FILE_SETTING):
            source_values[name] = current["Values"].get(name, "")
    config_env = {k: v for k, v in source_values.items() if k in (CONFIG_SETTING, CONFIG_FILE_SETTING) and v}
    if config_env.get(CONFIG_FILE_SETTING) and not Path(config_env[CONFIG_FILE_SETTING]).is_absolute():
        config_env[CONFIG_FILE_SETTING] = str(REPO_ROOT / config_env[CONFIG_FILE_SETTING])  # func start's root
    try:
        config = load_config(config_env)
    except ConfigError as err:
        raise DevError(f"the replication configuration is invalid: {err}") from err

    connections = {name: account_for(name, template) for name in config.connection_names()}
    accounts = list(dict.fromkeys([*connections.values(), DEVSTORE_ACCOUNT]))
    keys = account_keys(state_dir, accounts)
    ports, notes = choose_ports(opts.ports, state.get("ports", {}))
    for note in notes:
        _say(f"dev: {note}")
    state["ports"] = ports
    write_private(state_path, json.dumps(state, indent=1) + "\n")

    azurite = started["azurite"] = start_azurite(state_dir / "azurite", keys, ports, opts.startup_timeout)
    state["children"] = {"azurite": azurite.pid}
    write_private(state_path, json.dumps(state, indent=1) + "\n")
    _say(f"dev: Azurite PID {azurite.pid} on 127.0.0.1 (blob {ports['blob']}, queue {ports['queue']}, "
         f"table {ports['table']}), accounts {', '.join(accounts)}; data in {state_dir / 'azurite'}")

    strings = {name: connection_string(account, keys[account], ports) for name, account in connections.items()}
    values = dict(strings)
    values[HOST_STORAGE] = connection_string(DEVSTORE_ACCOUNT, DEVSTORE_KEY, ports)
    outcome = write_settings(opts.settings_file, state_dir, values, state, ask=tty_ask)
    write_private(state_path, json.dumps(state, indent=1) + "\n")
    _say(f"dev: {outcome.message}")
    _say(f"dev: containers {', '.join(create_containers(config.tables, strings))}")

    relay_env = {k: v for k, v in os.environ.items() if k not in (CONFIG_SETTING, CONFIG_FILE_SETTING)}
    relay_env.update({k: v for k, v in source_values.items() if not k.startswith("//") and isinstance(v, str)})
    relay_env.update(values)
    relay_env.update(config_env)
    webhook = f"{opts.functions_url}/runtime/webhooks/EventGrid?functionName=replicate_commit"
    relay = started["relay"] = subprocess.Popen(
        [sys.executable, "-m", "cli", "relay", "--state", str(state_dir / "relay-state.json"),
         "--interval", str(opts.relay_interval), "--host-url", webhook],
        cwd=REPO_ROOT, env=relay_env, stdin=subprocess.DEVNULL, start_new_session=True)
    state["children"]["relay"] = relay.pid
    write_private(state_path, json.dumps(state, indent=1) + "\n")
    host = ("answers: events are POSTed to it" if _functions_answer(opts.functions_url)
            else "is not running: events go to replicate_commit in-process until `func start` answers")
    _say(f"dev: relay PID {relay.pid}, position in {state_dir / 'relay-state.json'}; "
         f"the Functions host at {opts.functions_url} {host}")

    settings_arg = os.path.relpath(outcome.path)
    if settings_arg.startswith(".."):
        settings_arg = str(outcome.path)
    _say()
    for table in config.tables:
        account = connections[table.source.connection]
        _say(snippet(table, account, storage_options(account, keys[account], ports)))
        for replica in table.replicas:
            ra = connections[replica.connection]
            _say(f"# replica {replica.name}: DeltaTable(\"az://{replica.container}/{replica.path}\", "
                 f"storage_options={json.dumps(storage_options(ra, keys[ra], ports))})")
        _say()
    _say(f"Watch replication:  .venv/bin/python -m cli --settings {settings_arg} status --watch")
    _say("With `func start` running (another terminal, this directory):")
    _say(f"  status    GET {opts.functions_url}/api/status")
    for table in config.tables:
        _say(f"  resolver  GET {opts.functions_url}/api/tables/{table.name}/endpoint")
    _say(f"Stop: Ctrl-C here, or `kill -INT {os.getpid()}`. Tables, keys and the relay position stay in "
         f"{state_dir}; delete it to start from nothing.")
    return outcome.path
