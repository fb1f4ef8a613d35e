"""Bounds on every CLI command: a total deadline, per-request timeouts, and the endpoint it waited on.

An operator runs the CLI when something is wrong, and a region that accepts connections but never
answers must not hold a command for minutes (the SDK's own timeouts and retries add up to six).
Every HTTP request of the process (blob, table, Event Grid: all go through `requests`) passes one
wrapper that (1) caps its connect and read timeouts at REQUEST_CONNECT_SECONDS / REQUEST_READ_SECONDS
and at what is left of the command's deadline, and (2) records which endpoint it is waiting on, so a
command that runs out of time can say where it was stuck. The command itself runs in a worker
thread; the main thread stops waiting at the deadline whatever the worker is doing (a deltalake
read in Rust, a retry sleep), prints one line, and exits.

This lives in the CLI only: the function app keeps its own timeouts (shared/storage/clients.py) and
the Functions host's `functionTimeout` (host.json).
"""

from __future__ import annotations

import contextvars
import itertools
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.storage import object_client, table_row

REQUEST_CONNECT_SECONDS = 5.0
REQUEST_READ_SECONDS = 30.0
_MIN_REQUEST_SECONDS = 0.05


class CommandTimedOut(Exception):
    """Raised when a command did not finish within its --timeout; the message names the endpoint."""


@dataclass
class _Waiting:
    endpoint: str
    method: str
    started: float


class Deadline:
    """A command's total time budget, started now."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()

    def remaining(self) -> float:
        return self.seconds - (time.monotonic() - self.started)


_lock = threading.Lock()
_deadline: Deadline | None = None
_waiting: dict[int, _Waiting] = {}
_last_failed: str | None = None
_spent: dict[str, float] = {}  # endpoint -> seconds spent waiting on it under the current deadline
_names: dict[str, str] = {}  # endpoint -> connection setting name, for messages
_ids = itertools.count()
_installed = False
_active = False  # only while a CLI command runs: a process that imports the CLI (tests) is left alone after
# The deadline of the command whose worker (or a pool task it started: the runtime's pools carry the
# submitter's context) sends a request. It outlives the command: an abandoned worker's requests stay
# capped at its deadline, so they fail fast instead of running out the SDK's own timeouts and retries.
_command: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("cli_command_deadline", default=None)


def endpoint_of(url: str) -> str:
    """The storage endpoint of a request URL, without path below the account or any query (no SAS).

    Azure: https://<account>.blob.core.windows.net; Azurite (path-style): http://127.0.0.1:10000/<account>.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    base = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
    if host in ("127.0.0.1", "localhost", "::1") or host.replace(".", "").isdigit():
        account = parts.path.lstrip("/").split("/", 1)[0]
        return f"{base}/{account}" if account else base
    return base


def name_endpoint(url: str, connection: str) -> None:
    """Remember that `url` is reached through the setting `connection` (messages name both)."""
    with _lock:
        _names[endpoint_of(url)] = connection


def describe(endpoint: str | None) -> str:
    """'EASTUS_STORAGE (http://127.0.0.1:10000/eastus)', or the endpoint alone when its setting is unknown."""
    if endpoint is None:
        return "storage"
    name = _names.get(endpoint)
    return f"{name} ({endpoint})" if name else endpoint


def last_failed() -> str | None:
    """The endpoint of the most recent request that failed in transport (refused, reset, timed out)."""
    return _last_failed


def waiting_on() -> _Waiting | None:
    """The longest-outstanding request right now, if any."""
    with _lock:
        return min(_waiting.values(), key=lambda w: w.started, default=None)


def _cap(value, cap: float, remaining: float | None) -> float:
    limit = cap if remaining is None else min(cap, max(remaining, _MIN_REQUEST_SECONDS))
    return limit if value is None else min(float(value), limit)


def install() -> None:
    """Wrap `requests`' adapter once per process (idempotent)."""
    global _installed
    if _installed:
        return
    from requests.adapters import HTTPAdapter

    original = HTTPAdapter.send

    def send(self, request, stream=False, timeout=None, **kwargs):
        global _last_failed
        command = _command.get()
        if not _active and command is None:
            return original(self, request, stream=stream, timeout=timeout, **kwargs)
        deadline = command or _deadline
        remaining = deadline.remaining() if deadline is not None else None
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        timeout = (_cap(connect, REQUEST_CONNECT_SECONDS, remaining), _cap(read, REQUEST_READ_SECONDS, remaining))
        if not _active or command not in (None, _deadline):
            # An abandoned worker of an earlier command: capped, and kept out of the current one's account.
            return original(self, request, stream=stream, timeout=timeout, **kwargs)
        endpoint = endpoint_of(request.url)
        token = next(_ids)
        with _lock:
            _waiting[token] = _Waiting(endpoint, request.method, time.monotonic())
        try:
            response = original(self, request, stream=stream, timeout=timeout, **kwargs)
        except Exception:
            _last_failed = endpoint
            raise
        finally:
            with _lock:
                waited = _waiting.pop(token, None)
                if waited is not None:
                    _spent[endpoint] = _spent.get(endpoint, 0.0) + time.monotonic() - waited.started
        if response.status_code in (401, 403) or response.status_code >= 500:
            _last_failed = endpoint
        return response

    HTTPAdapter.send = send
    _installed = True


def set_deadline(seconds: float | None) -> None:
    """Start a deadline for the requests from now on (None: only the per-request caps)."""
    global _deadline, _last_failed, _active
    install()
    _active = True
    # Every request of a command passes through `requests` (above), so that a timed-out command names
    # the endpoint it waited on and an abandoned worker's requests end at the deadline; the hot path's
    # lean table read and object_store (timeouts of 60 s, retries) would bypass both.
    table_row.set_enabled(False)
    object_client.set_enabled(False)
    _deadline = None if seconds is None else Deadline(seconds)
    _last_failed = None
    with _lock:
        _spent.clear()


def slowest() -> tuple[str, float, bool] | None:
    """(endpoint, seconds spent on it, still waiting) for the endpoint that took most of the deadline."""
    now = time.monotonic()
    with _lock:
        spent = dict(_spent)
        outstanding = {w.endpoint for w in _waiting.values()}
        for w in _waiting.values():
            spent[w.endpoint] = spent.get(w.endpoint, 0.0) + now - w.started
    if not spent:
        return None
    endpoint = max(spent, key=spent.get)
    return endpoint, spent[endpoint], endpoint in outstanding


def deactivate() -> None:
    """The command is over: later requests of this process (an importer's, not the CLI's) are not capped."""
    global _deadline, _active
    _active, _deadline = False, None
    table_row.set_enabled(True)
    object_client.set_enabled(True)


def timed_out_message(command: str, seconds: float) -> str:
    found = slowest()
    if found is not None:
        endpoint, spent, still = found
        where = (f"it spent {spent:.1f}s waiting on {describe(endpoint)}"
                 + (", which accepts connections but does not answer" if still else ""))
    elif _last_failed is not None:
        where = f"its last failed request went to {describe(_last_failed)}"
    else:
        where = "no storage request was outstanding"
    return (f"{command} did not finish within --timeout {seconds:g}s: {where}. Check that endpoint (its region, "
            "network, firewall); `python -m cli status` shows every location. Raise --timeout to wait longer. "
            "Nothing more will be done by this run.")


def run_bounded(command: str, seconds: float, call):
    """Run `call()` in a worker thread and wait at most `seconds` for it.

    Returns:
        What `call` returned.

    Raises:
        CommandTimedOut: it did not finish in time (the worker is abandoned: it is a daemon thread,
            and its requests time out at the deadline anyway).
        Whatever `call` raised.
    """
    set_deadline(seconds)
    outcome: dict = {}
    command = _deadline

    def target() -> None:
        _command.set(command)  # this thread's context, copied into every pool task it starts
        try:
            outcome["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread, which reports it
            outcome["error"] = err

    worker = threading.Thread(target=target, name=f"cli-{command}", daemon=True)
    worker.start()
    worker.join(seconds)
    # The deadline stays set: an abandoned worker's requests keep failing fast.
    if worker.is_alive():
        raise CommandTimedOut(timed_out_message(command, seconds))
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def abandoned_workers() -> bool:
    """Whether a timed-out command's worker still runs (the process must then exit without joining it)."""
    return any(t.name.startswith("cli-") and t.is_alive() for t in threading.enumerate())
