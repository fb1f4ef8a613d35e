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

Correctness never depends on a lease for replica commits (every replica write is
conditional); leases keep two invocations from doing the same work, keep retention from racing
a commit, and keep two rejoins of one location apart. A holder that cannot renew must therefore
stop writing: `hold` yields a `HeldLease` whose `check()` raises `LeaseLost` once a renewal
failed or the lease may have expired; rejoin, retention and catch-up call it before every
write. (It is truthy when another holder made us wait, so `with hold(...) as waited:` reads as
before.)
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

from shared import failpoints
from shared.errors import LeaseLost, ReplicaBusy
from shared.storage.errors import WRITE_ROLE, classify

log = logging.getLogger(__name__)

LOCKS_CONTAINER = "delta-replication-locks"
LEASE_SECONDS = 15  # short, so a crashed holder frees the lock quickly; renewed while held
LEASE_WAIT_SECONDS = 60
# A holder stops writing this long before its lease could expire unrenewed: a write sent at the
# last instant must not land after another holder acquired it.
EXPIRY_MARGIN_SECONDS = 3
from shared.failpoints import LEASE_RENEW  # noqa: E402,F401 - named with the others


def location_lease_name(account: str, container: str, path: str) -> str:
    """The lease blob guarding one table location."""
    return f"locations/{account}/{container}/{path.strip('/')}"


class HeldLease:
    """A lease this process holds: renewed by the keeper; `check()` before every write.

    Args:
        client: the BlobLeaseClient that acquired it.
        name: the lease blob's name (for messages).
        waited: another holder made us wait for it.
        acquired_at: monotonic time the acquiring request was sent (the lease runs from then).
    """

    def __init__(self, client: BlobLeaseClient, name: str, *, waited: bool, acquired_at: float | None = None) -> None:
        self._client = client
        self.name = name
        self.waited = waited
        self._renewed_at = time.monotonic() if acquired_at is None else acquired_at
        self._failure: str | None = None

    def __bool__(self) -> bool:
        return self.waited

    def renew(self) -> bool:
        """Renew now (the keeper's job); a failure is remembered: from then on `check()` raises."""
        if self._failure is not None:
            return False
        sent = time.monotonic()
        try:
            failpoints.hit(LEASE_RENEW, lease=self.name)
            self._client.renew()
        except Exception as err:  # noqa: BLE001 - any failure: we may no longer hold it
            self._failure = type(err).__name__
            log.warning("lease.renew_failed lease=%s error=%s", self.name, self._failure,
                        extra={"lease": self.name})
            return False
        self._renewed_at = sent
        return True

    def check(self) -> None:
        """Raise unless the lease is surely still ours; call it right before every write it guards.

        Raises:
            LeaseLost: a renewal failed, or the last renewal is so old the lease may have expired
                (retryable: the next run takes the lease again).
        """
        if self._failure is not None:
            raise LeaseLost(f"lease {self.name} could not be renewed ({self._failure}); another holder may have it, "
                            "so this one stopped before its next write. It will be retried.")
        age = time.monotonic() - self._renewed_at
        if age >= LEASE_SECONDS - EXPIRY_MARGIN_SECONDS:
            raise LeaseLost(f"lease {self.name} was last renewed {age:.1f}s ago and may have expired (it lasts "
                            f"{LEASE_SECONDS}s); this holder stopped before its next write. It will be retried.")


class _LeaseKeeper:
    """One daemon thread renewing every held lease (no thread per lease)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: dict[int, tuple] = {}
        self._thread: threading.Thread | None = None

    def hold(self, lease: HeldLease) -> None:
        with self._lock:
            self._leases[id(lease)] = (lease, time.monotonic() + LEASE_SECONDS / 3)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()

    def drop(self, lease: HeldLease) -> None:
        with self._lock:
            self._leases.pop(id(lease), None)

    def renew_due(self, *, now: float | None = None) -> None:
        """Renew every lease due by `now` (default: the clock; tests pass infinity to renew all now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [(k, lease) for k, (lease, at) in self._leases.items() if at <= now]
        for key, lease in due:
            renewed = lease.renew()
            with self._lock:
                if key in self._leases:
                    if renewed:
                        self._leases[key] = (lease, time.monotonic() + LEASE_SECONDS / 3)
                    else:  # lost: its holder stops at its next check; nothing left to renew
                        del self._leases[key]

    def _run(self) -> None:
        while True:
            time.sleep(0.5)
            self.renew_due()


_KEEPER = _LeaseKeeper()


def renew_held_leases_now() -> None:
    """Renew every lease this process holds, now (what the keeper does every LEASE_SECONDS/3);
    tests use it to make a renewal happen at a chosen instant."""
    _KEEPER.renew_due(now=float("inf"))


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
        """Hold the lease `name`; yields a `HeldLease` (truthy if another holder made us wait).

        Renewed in the background while held; released on exit (or it expires within
        LEASE_SECONDS if this process dies). Call `check()` on it before every write it guards:
        it raises `LeaseLost` once a renewal failed.

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
                    sent = time.monotonic()  # the lease lasts from (at the latest) when the request left
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
        held = HeldLease(lease, name, waited=waited, acquired_at=sent)
        _KEEPER.hold(held)
        try:
            yield held
        finally:
            _KEEPER.drop(held)
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
