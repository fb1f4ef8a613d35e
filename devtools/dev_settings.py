"""The dev environment's state and settings: keys, ports, and a local.settings.json never overwritten unasked.

Everything here is files in the state directory (default `.dev/`) and the settings file;
devtools/dev.py starts the processes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from devtools.azurite import DEVSTORE_ACCOUNT, DEVSTORE_KEY, REPO_ROOT, free_port

SETTINGS_EXAMPLE = REPO_ROOT / "local.settings.json.example"
DEFAULT_PORTS = {"blob": 10000, "queue": 10001, "table": 10002}


class DevError(Exception):
    """Raised when the dev environment cannot start; the message says what to do."""


# ---------------------------------------------------------------- state: keys, ports, fingerprints


def read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)


def account_keys(state_dir: Path, accounts: list[str]) -> dict[str, str]:
    """Each account's key: generated once with `secrets` and kept in `<state>/keys.json`.

    devstoreaccount1 keeps Azurite's well-known key, so `UseDevelopmentStorage=true` works on
    the default ports.
    """
    path = state_dir / "keys.json"
    keys = read_json(path, {})
    changed = False
    for account in accounts:
        if account != DEVSTORE_ACCOUNT and account not in keys:
            keys[account] = base64.b64encode(secrets.token_bytes(64)).decode()
            changed = True
    if changed:
        write_private(path, json.dumps(keys, indent=1) + "\n")
    keys[DEVSTORE_ACCOUNT] = DEVSTORE_KEY
    return {a: keys[a] for a in accounts}


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As node's listen() does: connections of a previous run in TIME_WAIT do not make the port taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_ports(explicit: dict, saved: dict) -> tuple[dict, list[str]]:
    """Ports per service: the flag, else the last run's, else Azurite's defaults; a taken one falls back to a free one.

    Raises:
        DevError: a port given by flag is taken.
    """
    ports, notes = {}, []
    for service, default in DEFAULT_PORTS.items():
        if explicit.get(service):
            port = explicit[service]
            if not _port_free(port):
                raise DevError(f"port {port} (--{service}-port) is in use; choose another one")
        else:
            port = saved.get(service) or default
            if not _port_free(port):
                fallback = free_port()
                notes.append(f"{service} port {port} is in use; using {fallback} (choose with --{service}-port)")
                port = fallback
        ports[service] = port
    return ports, notes


# ---------------------------------------------------------------- accounts and settings


def connection_string(account: str, key: str, ports: dict) -> str:
    base = "http://127.0.0.1:{}/" + account
    return (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
            f"BlobEndpoint={base.format(ports['blob'])};QueueEndpoint={base.format(ports['queue'])};"
            f"TableEndpoint={base.format(ports['table'])};")


def storage_options(account: str, key: str, ports: dict) -> dict[str, str]:
    """deltalake (object_store) options for an account of the dev Azurite."""
    return {"account_name": account, "account_key": key,
            "azure_storage_endpoint": f"http://127.0.0.1:{ports['blob']}/{account}", "allow_http": "true"}


def account_for(connection: str, template_values: dict) -> str:
    """The Azurite account behind a connection name: the example's AccountName, else derived from the name."""
    match = re.search(r"AccountName=([a-z0-9]+)", template_values.get(connection, ""))
    if match:
        return match.group(1)
    name = re.sub(r"[^a-z0-9]", "", re.sub(r"_?storage$", "", connection.lower()))
    return (name or "account")[:24].ljust(3, "0")


def load_settings_doc(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DevError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); fix or remove it and "
                       f"start again") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("Values"), dict):
        raise DevError(f"{path} has no \"Values\" object; fix or remove it and start again")
    return doc


def render_settings(doc: dict) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class SettingsOutcome:
    path: Path  # the file whose Values match this environment (the user's, or the copy in the state dir)
    message: str


def write_settings(settings_file: Path, state_dir: Path, values: dict, state: dict, *,
                   ask=None) -> SettingsOutcome:
    """Write `values` into the settings file without overwriting what the user edited.

    The file is (re)written when it is missing or still exactly what the last run wrote (its
    SHA-256 is kept in the state). A file edited since is left alone unless `ask` (a TTY
    prompt) says yes; it is only ever merged (our keys set, every other value kept). The
    complete file this environment needs is always at `<state>/local.settings.json`.
    """
    template = json.loads(SETTINGS_EXAMPLE.read_text())
    template["Values"].update(values)
    proposed = state_dir / "local.settings.json"
    write_private(proposed, render_settings(template))
    fingerprints = state.setdefault("settings_sha256", {})
    key = str(settings_file.resolve())
    current = load_settings_doc(settings_file)
    if current is None or fingerprints.get(key) == _fingerprint(settings_file.read_text()):
        text = render_settings(template)
        verb = "wrote" if current is None else ("kept" if settings_file.read_text() == text else "updated")
        write_private(settings_file, text)
        fingerprints[key] = _fingerprint(text)
        return SettingsOutcome(settings_file, f"{verb} {settings_file} (connection strings for the dev Azurite)")
    stale = sorted(k for k, v in values.items() if current["Values"].get(k) != v)
    if not stale:
        return SettingsOutcome(settings_file, f"kept {settings_file} (edited by you; its connection strings match)")
    if ask is not None and ask(f"{settings_file} was edited since dev.sh wrote it; set {', '.join(stale)} "
                               f"in it and keep everything else? [y/N] "):
        current["Values"].update({k: values[k] for k in stale})
        text = render_settings(current)
        write_private(settings_file, text)
        fingerprints[key] = _fingerprint(text)
        return SettingsOutcome(settings_file, f"updated {', '.join(stale)} in {settings_file}")
    return SettingsOutcome(proposed, (
        f"left {settings_file} unchanged: you edited it, and {', '.join(stale)} differ from this environment. "
        f"Copy them from {proposed} (`diff {settings_file} {proposed}`); until then use "
        f"--settings {proposed}"))


def tty_ask(question: str) -> bool:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return False
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False
