"""Leases in the function app's own storage: coordination state never touches a replica.

Azure Functions keeps its singleton locks in the host's storage account; replication does
the same. A lease is a blob lease on a small blob in one container of that account
(`delta-replication-locks`), so replica accounts hold exactly the table's files.

Blob names say what they guard:
- `locations/<account>/<container>/<table path>`: replication into (and retention of) one
  replica location. Keyed by the location rather than by table and replica name, so two
  configurations naming the same replica (two apps sharing host storage, a renamed table)
  still serialise on it.
- `consolidations/<name>`, `rejoin/<table>`: one run of a job at a time.

Correctness never depends on a lease (every replica write is conditional); leases only keep
two invocations from doing the same work, and keep retention from racing a commit.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobLeaseClient, BlobServiceClient

from shared.errors import ReplicaBusy
from shared.storage.errors import WRITE_ROLE, classify

log = logging.getLogger(__name__)

LOCKS_CONTAINER = "delta-replication-locks"
LEASE_SECONDS = 15  # short, so a crashed holder frees the lock quickly; renewed while held
LEASE_WAIT_SECONDS = 60


def location_lease_name(account: str, container: str, path: str) -> str:
    """The lease blob guarding one table location."""
    return f"locations/{account}/{container}/{path.strip('/')}"


class _LeaseKeeper:
    """One daemon thread renewing every held lease (no thread per lease)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: dict[int, tuple] = {}
        self._thread: threading.Thread | None = None

    def hold(self, lease, label: str) -> None:
        with self._lock:
            self._leases[id(lease)] = (lease, label, time.monotonic() + LEASE_SECONDS / 3)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()

    def drop(self, lease) -> None:
        with self._lock:
            self._leases.pop(id(lease), None)

    def _run(self) -> None:
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            with self._lock:
                due = [(k, v) for k, v in self._leases.items() if v[2] <= now]
            for key, (lease, label, _) in due:
                try:
                    lease.renew()
                except Exception as err:  # noqa: BLE001 - the holder's conditional writes still protect it
                    log.warning("lease.renew_failed lease=%s error=%s", label, type(err).__name__)
                with self._lock:
                    if key in self._leases:
                        self._leases[key] = (lease, label, time.monotonic() + LEASE_SECONDS / 3)


_KEEPER = _LeaseKeeper()


class LeaseStore:
    """Named leases in one container of the function app's storage account.

    Args:
        service: a client for the host storage account (AzureWebJobsStorage or STATUS_CONNECTION).
        connection_name: the connection's *name*, for messages.
        container: the container holding the lease blobs.
    """

    def __init__(self, service: BlobServiceClient, *, connection_name: str, container: str = LOCKS_CONTAINER) -> None:
        self._container = service.get_container_client(container)
        self.connection_name = connection_name
        self.container = container

    @contextlib.contextmanager
    def hold(self, name: str, *, wait_seconds: float = LEASE_WAIT_SECONDS):
        """Hold the lease `name`; yields True if another holder made us wait.

        Renewed in the background while held; released on exit (or it expires within
        LEASE_SECONDS if this process dies).

        Raises:
            ReplicaBusy: another holder kept it for longer than `wait_seconds`.
            ReplicaUnreachable: the host storage account did not answer (retryable).
            AccessDenied: it refused our credentials (not retryable).
        """
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"a lease name is a relative blob name without '..' (got {name!r})")
        blob = self._container.get_blob_client(name)
        lease = BlobLeaseClient(blob)
        deadline = time.monotonic() + wait_seconds
        delay, waited = 0.05, False
        try:
            while True:
                try:
                    lease.acquire(lease_duration=LEASE_SECONDS)
                    break
                except HttpResponseError as err:
                    if err.status_code == 404:
                        self._create(blob)
                        continue
                    if err.status_code != 409:
                        raise
                    if time.monotonic() > deadline:
                        raise ReplicaBusy(
                            f"lease {name} in {self.connection_name}:{self.container} has been held by another "
                            f"invocation for over {wait_seconds:.0f}s; this work will be retried."
                        ) from err
                    waited = True
                    time.sleep(delay)
                    delay = min(delay * 1.5, 1.0)
        except (ServiceRequestError, ServiceResponseError, HttpResponseError) as err:
            raise classify(err, connection=self.connection_name, what=f"acquiring lease {name}",
                           subject=f"the function app's storage ({self.connection_name}:{self.container})",
                           role=WRITE_ROLE) from err
        _KEEPER.hold(lease, name)
        try:
            yield waited
        finally:
            _KEEPER.drop(lease)
            try:
                lease.release()
            except Exception:  # noqa: BLE001 - it expires by itself within LEASE_SECONDS
                pass

    def _create(self, blob) -> None:
        try:
            blob.upload_blob(b"", overwrite=False)
        except ResourceExistsError:
            return
        except HttpResponseError as err:
            if err.status_code != 404:
                raise
            try:
                self._container.create_container()
            except ResourceExistsError:
                pass
            try:
                blob.upload_blob(b"", overwrite=False)
            except ResourceExistsError:
                pass
