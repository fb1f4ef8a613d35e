"""Start and stop private Azurite processes on free loopback ports.

Each `AzuriteProcess` owns one Azurite blob service with its own data folder and the
accounts it was given. It remembers its PID and only ever stops that PID, so tests and
the demo never touch an Azurite somebody else started.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

_STARTED: "weakref.WeakValueDictionary[int, AzuriteProcess]" = weakref.WeakValueDictionary()  # for stop_all()

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BLOB_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
AZURITE_TABLE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-table"

# The well-known Azurite development key; devstoreaccount1 keeps it so that
# UseDevelopmentStorage-style settings keep working.
DEVSTORE_ACCOUNT = "devstoreaccount1"
DEVSTORE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def account_key(account: str) -> str:
    """A deterministic, valid (base64, 64 bytes) account key for a test account."""
    return base64.b64encode(hashlib.sha512(("azurite-" + account).encode()).digest()).decode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AzuriteProcess:
    """One Azurite blob service on loopback with the given accounts."""

    accounts: tuple[str, ...]
    location: Path | None = None
    port: int = 0
    with_table: bool = False
    table_port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)
    table_process: subprocess.Popen | None = field(default=None, repr=False)
    _own_location: bool = False

    @classmethod
    def attach(cls, accounts: tuple[str, ...], spec: str) -> "AzuriteProcess":
        """An Azurite started elsewhere (`serve`), given as "<blob port>:<table port>": this
        object never stops it (no process of its own)."""
        blob, _, table = spec.partition(":")
        return cls(accounts, port=int(blob), with_table=bool(table), table_port=int(table or 0))

    @property
    def attached(self) -> bool:
        return self.process is None and self.port != 0 and id(self) not in _STARTED

    def start(self) -> "AzuriteProcess":
        if not AZURITE_BLOB_BIN.exists():
            raise RuntimeError(
                f"Azurite is not installed at {AZURITE_BLOB_BIN}; run `npm ci` in {REPO_ROOT}"
            )
        if self.location is None:
            self.location = Path(tempfile.mkdtemp(prefix="azurite-"))
            self._own_location = True
        if not self.port:
            self.port = free_port()
        names = list(dict.fromkeys(self.accounts + (DEVSTORE_ACCOUNT,)))
        env = dict(os.environ)
        env["AZURITE_ACCOUNTS"] = ";".join(
            f"{n}:{DEVSTORE_KEY if n == DEVSTORE_ACCOUNT else account_key(n)}" for n in names
        )
        log = open(self.location / "azurite.log", "ab")
        self.process = subprocess.Popen(
            [
                str(AZURITE_BLOB_BIN),
                "--blobHost", "127.0.0.1",
                "--blobPort", str(self.port),
                "--location", str(self.location),
                "--silent",
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        if self.with_table:
            if not self.table_port:
                self.table_port = free_port()
            self.table_process = subprocess.Popen(
                [str(AZURITE_TABLE_BIN), "--tableHost", "127.0.0.1", "--tablePort", str(self.table_port),
                 "--location", str(self.location), "--silent", "--disableTelemetry", "--skipApiVersionCheck",
                 "--loose"],
                stdout=open(self.location / "azurite-table.log", "ab"), stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )
        log.close()
        _STARTED[id(self)] = self
        self._wait_ready(self.process, self.port)
        if self.table_process is not None:
            self._wait_ready(self.table_process, self.table_port)
        return self

    def _wait_ready(self, process: subprocess.Popen, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"Azurite exited with {process.returncode}; see the logs in {self.location}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Azurite did not listen on 127.0.0.1:{port} within {timeout}s")

    def stop(self) -> None:
        """Stop this process (and only it); keeps the data folder for a restart."""
        _STARTED.pop(id(self), None)
        table, self.table_process = self.table_process, None
        self._stop_one(table)
        proc, self.process = self.process, None
        self._stop_one(proc)

    @staticmethod
    def _stop_one(proc: subprocess.Popen | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        # Azurite runs node under the npm shim in its own session: signal that group only.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def restart(self) -> None:
        """Start again on the same port and data folder, as a region coming back."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_location and self.location is not None:
            shutil.rmtree(self.location, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def endpoint(self, account: str) -> str:
        return f"http://127.0.0.1:{self.port}/{account}"

    def connection_string(self, account: str) -> str:
        key = DEVSTORE_KEY if account == DEVSTORE_ACCOUNT else account_key(account)
        table = f"TableEndpoint=http://127.0.0.1:{self.table_port}/{account};" if self.with_table else ""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
            f"BlobEndpoint={self.endpoint(account)};{table}"
        )

    def storage_options(self, account: str) -> dict[str, str]:
        """deltalake (object_store) options for an account of this process."""
        key = DEVSTORE_KEY if account == DEVSTORE_ACCOUNT else account_key(account)
        return {
            "account_name": account,
            "account_key": key,
            "azure_storage_endpoint": self.endpoint(account),
            "allow_http": "true",
        }

    def __enter__(self) -> "AzuriteProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def stop_all() -> None:
    """Stop every Azurite this Python process started and has not stopped (a test process being
    ended from outside, e.g. by the mutation runner's timeout, cannot run its fixtures' teardown)."""
    for proc in list(_STARTED.values()):
        proc.stop()


def serve(accounts: tuple[str, ...], ports_file: str) -> None:
    """Start one Azurite (blob and table) with `accounts`, write "<blob port>:<table port>" to
    `ports_file`, and keep it until SIGTERM (scripts/mutation.sh: one Azurite for every mutant's
    test session instead of one each)."""
    proc = AzuriteProcess(accounts, with_table=True).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        Path(ports_file).write_text(f"{proc.port}:{proc.table_port}")
        done.wait()
    finally:
        proc.close()


if __name__ == "__main__":
    import sys

    serve(tuple(sys.argv[2].split(",")), sys.argv[1])
