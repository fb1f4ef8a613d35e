"""Build storage clients from resolved connection settings, once per host.

Clients keep their HTTP connection pools, so they are reused across invocations.
"""

from __future__ import annotations

import threading
import uuid
from urllib.parse import urlparse

from azure.storage.blob import BlobServiceClient, LinearRetry

from shared import deadline
from shared.config.model import ConnectionSettings
from shared.config.settings import transport_options

# Event Grid redelivers on failure, so a few quick retries beat the SDK's minutes-long default.
_RETRY = dict(backoff=0.5, retry_total=2, random_jitter_range=0.2)
_TRANSFER = dict(
    max_single_put_size=8 * 1024 * 1024,
    max_block_size=8 * 1024 * 1024,
    max_single_get_size=8 * 1024 * 1024,
    max_chunk_get_size=8 * 1024 * 1024,
    connection_timeout=10,
    read_timeout=120,
)


class RequestCounter:
    """Counts HTTP requests (every attempt) sent through clients; benchmarks and tests read it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.by_method: dict[str, int] = {}

    def __call__(self, request) -> None:  # the storage SDK's raw_request_hook
        method = request.http_request.method
        with self._lock:
            self.count += 1
            self.by_method[method] = self.by_method.get(method, 0) + 1

    def reset(self) -> None:
        with self._lock:
            self.count = 0
            self.by_method = {}


# Every request the function app sends carries this x-ms-client-request-id prefix, so the Event
# Grid subscriptions on each location (any may become primary) drop the BlobCreated events of
# the replicator's own writes with a StringNotBeginsWith filter on data.clientRequestId.
CLIENT_REQUEST_ID_PREFIX = "delta-replication-"
CLIENT_REQUEST_ID_HEADER = "x-ms-client-request-id"


class _DeadlineHook:
    """raw_request_hook, run before every attempt (after the retry policy): check the invocation's
    deadline and cap the attempt's timeouts at what is left of it (shared/deadline.py)."""

    def __init__(self, options: dict, *, grace: float = 0.0) -> None:
        # The client's own timeouts (300 s each: azure-core's defaults when a client sets none).
        self._timeouts = {name: options.get(name, 300) for name in ("connection_timeout", "read_timeout")}
        self._grace = grace

    def __call__(self, request) -> None:
        if deadline.remaining() is None:
            return  # no invocation deadline (the CLI, tests, benchmarks)
        left = deadline.check(f"{request.http_request.method} {urlparse(request.http_request.url).path}",
                              grace=self._grace)
        options = request.context.options
        for name, configured in self._timeouts.items():
            options[name] = min(options.get(name) or configured, left)


def with_deadline(options: dict, counter: "RequestCounter | None" = None) -> dict:
    """`options` for an azure-core client of the function app's tables, plus the deadline hook
    (with the grace for recording an invocation's outcome), counting requests when given a counter."""
    hook = (_DeadlineHook(options, grace=deadline.RECORD_GRACE_SECONDS) if counter is None
            else _TagRequests(counter, options, grace=deadline.RECORD_GRACE_SECONDS))
    return {**options, "raw_request_hook": hook}


class _TagRequests(_DeadlineHook):
    """The data clients' raw_request_hook: the deadline, then tag the request as the replicator's,
    then count it (if counting)."""

    def __init__(self, counter: RequestCounter | None, options: dict, *, grace: float = 0.0) -> None:
        super().__init__(options, grace=grace)
        self._counter = counter

    def __call__(self, request) -> None:
        super().__call__(request)
        request.http_request.headers[CLIENT_REQUEST_ID_HEADER] = CLIENT_REQUEST_ID_PREFIX + uuid.uuid4().hex
        if self._counter is not None:
            self._counter(request)


def build_blob_service_client(settings: ConnectionSettings, *, counter: RequestCounter | None = None,
                              host: bool = False) -> BlobServiceClient:
    """A BlobServiceClient for one connection: connection string, or Entra ID identity.

    `host`: the function app's own storage (leases): its requests get the deadline's grace, so a
    lease held by work stopped at the deadline is still released.

    Example:
        >>> build_blob_service_client(resolve_connection("WESTEU_STORAGE"))
    """
    options = dict(_TRANSFER)
    options["retry_policy"] = LinearRetry(**_RETRY)
    return _build(settings, options, counter, grace=deadline.RECORD_GRACE_SECONDS if host else 0.0)


# Readers choosing a location want a dead region to fail fast, not after the copy path's
# patient timeouts: a short connect timeout and a single quick retry.
PROBE_CONNECT_TIMEOUT_SECONDS = 2
PROBE_READ_TIMEOUT_SECONDS = 5
_PROBE_RETRY = dict(backoff=0.2, retry_total=1, random_jitter_range=0.1)


def build_probe_client(settings: ConnectionSettings, *, counter: RequestCounter | None = None) -> BlobServiceClient:
    """A BlobServiceClient with short timeouts, for the read resolver's small requests."""
    options = dict(connection_timeout=PROBE_CONNECT_TIMEOUT_SECONDS, read_timeout=PROBE_READ_TIMEOUT_SECONDS,
                   retry_policy=LinearRetry(**_PROBE_RETRY))
    return _build(settings, options, counter)


def _build(settings: ConnectionSettings, options: dict, counter: RequestCounter | None, *,
           grace: float = 0.0) -> BlobServiceClient:
    # The storage SDK runs this hook after setting its own request id and before signing.
    options["raw_request_hook"] = _TagRequests(counter, options, grace=grace)
    options.update(transport_options())
    if settings.connection_string:
        return BlobServiceClient.from_connection_string(settings.connection_string, **options)
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if settings.credential_kind == "managedidentity":
        credential = ManagedIdentityCredential(client_id=settings.client_id)
    else:
        credential = DefaultAzureCredential(managed_identity_client_id=settings.client_id)
    return BlobServiceClient(settings.blob_service_url, credential=credential, **options)
