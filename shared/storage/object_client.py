"""obstore (Rust object_store) clients: one AzureStore per connection and container, and the one way
a request is sent through them (counted, bounded by the invocation's deadline, failures mapped).

Why: a request through the Python storage SDK costs about 1.3-4.8 ms of CPU (thousands of Python
calls); through object_store, 0.2-0.4 ms. The hot path (heads, commit reads and creates, small file
copies, streamed reads) goes through here; what object_store lacks stays on the SDK
(`BlobTableStore`): cross-account Copy Blob, SAS signing, ETag-conditional overwrites and deletes,
conditional block lists.

Credentials, per connection (the same settings as the SDK clients, `shared.config.settings`):
- an account key: object_store signs Shared Key over the headers it knows, so a default header (the
  request id below) would break the signature. The key therefore never reaches object_store: it gets
  a container SAS (read, create, write: what its calls need, no list or delete; 1 hour, renewed 10
  minutes before expiry) signed here. Not create alone: a conditional create of an existing blob is
  then refused as 403 (seen on Azurite), not 409, and "exists" could no longer be told from "denied".
- a SAS connection string: its SAS.
- identity (`__blobServiceUri`): azure-identity's credential, through obstore's provider.

Every request carries `x-ms-client-request-id: delta-replication-<host id>`, the prefix the Event Grid
subscriptions filter on (`CLIENT_REQUEST_ID_PREFIX`), so the replicator's own writes raise no events.

Deadline: object_store's timeouts are fixed per client (connect 5 s, request 60 s, two retries within
20 s). A request is sent synchronously (cheapest) when the invocation has more time left than it
could take; closer to the deadline it runs on this module's event loop thread and is abandoned
(its future dropped, the connection closed) when the deadline passes: `DeadlineExceeded`.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from urllib.parse import quote
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from obstore.exceptions import AlreadyExistsError, BaseError, NotFoundError, PreconditionError
from obstore.store import AzureStore

from shared import deadline
from shared.config.model import ConnectionSettings
from shared.config.settings import connection_string_parts, object_client_options
from shared.errors import DeadlineExceeded
from shared.storage.clients import CLIENT_REQUEST_ID_HEADER, CLIENT_REQUEST_ID_PREFIX, RequestCounter
from shared.storage.errors import object_store_error

_enabled = True  # off while a CLI command runs (cli/deadline.py): its requests all pass through `requests`


def set_enabled(enabled: bool) -> None:
    """Switch object_store on or off for runtimes built from now on in this process (off: the SDK stores)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


CONNECT_TIMEOUT = timedelta(seconds=5)
REQUEST_TIMEOUT = timedelta(seconds=60)
RETRY = {"max_retries": 2, "retry_timeout": timedelta(seconds=20),
         "backoff": {"init_backoff": timedelta(milliseconds=500), "max_backoff": timedelta(seconds=4), "base": 2}}
# The longest one call can take (connect, request, retries): with more time left than this, the call
# cannot outlast the deadline and is sent synchronously.
LONGEST_CALL_SECONDS = 3 * (CONNECT_TIMEOUT + REQUEST_TIMEOUT).total_seconds() + 20
SAS_LIFETIME = timedelta(hours=1)
SAS_RENEW_BEFORE = timedelta(minutes=10)

# "Absent": obstore raises the builtin FileNotFoundError (its NotFoundError is declared, not raised).
ABSENT = (NotFoundError, FileNotFoundError)
# The library's answers the callers decide on (absent, exists, changed): never mapped.
PASSTHROUGH = (*ABSENT, AlreadyExistsError, PreconditionError)


class _KeySas:
    """obstore credential provider: a container SAS signed with the account key (never given to obstore)."""

    def __init__(self, account: str, key: str, container: str) -> None:
        self._account, self._key, self._container = account, key, container

    def __call__(self) -> dict:
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        expiry = datetime.now(timezone.utc) + SAS_LIFETIME
        sas = generate_container_sas(self._account, self._container, account_key=self._key, expiry=expiry,
                                     permission=ContainerSasPermissions(read=True, create=True, write=True))
        return {"sas_token": sas, "expires_at": expiry - SAS_RENEW_BEFORE}


class _Loop:
    """One event loop thread for calls near the deadline (started on first use, again in a forked child,
    which has no thread of its parent's)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def run(self, make: Callable[[], Any], timeout: float):
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                self._loop, self._pid = asyncio.new_event_loop(), os.getpid()
                threading.Thread(target=self._loop.run_forever, name="obstore-deadline", daemon=True).start()

        async def call():  # the coroutine is made on the loop's thread (obstore needs a running loop)
            return await make()

        future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            future.cancel()  # drops the request
            raise


_LOOP = _Loop()


class _HttpRequest:
    """A request as a counter (an SDK raw_request_hook) reads it: `.method`, `.url`, `.headers`. The URL and
    headers are made only when read: counting by method (the benchmarks) costs no formatting."""

    __slots__ = ("method", "_make")

    def __init__(self, method: str, make: Callable[[], tuple[str, dict]]) -> None:
        self.method, self._make = method, make

    @property
    def url(self) -> str:
        return self._make()[0]

    @property
    def headers(self) -> dict:
        return self._make()[1]


class _Sent:
    """What a request counter reads of a request: `.http_request` (the request id every request carries is
    among its headers: the client's default header)."""

    __slots__ = ("http_request",)

    def __init__(self, http_request: _HttpRequest) -> None:
        self.http_request = http_request


class ObjectClients:
    """obstore stores for the configured connections, built on first use and reused.

    Args:
        settings: connection name -> ConnectionSettings (the runtime's).
        counter: the runtime's request counter (a raw_request_hook): called once per call, with the request's
            method and URL, before it is sent (object_store's own retries are not shown to it).
    """

    def __init__(self, settings: Mapping[str, ConnectionSettings], *, counter: RequestCounter | None = None) -> None:
        self._settings = settings
        self._counter = counter
        self._stores: dict[tuple[str, str], AzureStore] = {}
        self._lock = threading.Lock()
        self._request_id = CLIENT_REQUEST_ID_PREFIX + uuid.uuid4().hex

    def store(self, connection: str, container: str) -> AzureStore:
        key = (connection, container)
        with self._lock:
            store = self._stores.get(key)
            if store is None:
                store = self._stores[key] = self._build(self._settings[connection], container)
            return store

    def _build(self, settings: ConnectionSettings, container: str) -> AzureStore:
        url = settings.blob_service_url
        options: dict[str, Any] = {
            "client_options": {"connect_timeout": CONNECT_TIMEOUT, "timeout": REQUEST_TIMEOUT,
                               "allow_http": url.startswith("http://"),
                               "default_headers": {CLIENT_REQUEST_ID_HEADER: self._request_id},
                               # the proxy and CA bundle of the environment, as the SDK clients take them
                               **object_client_options(scheme=url.split(":", 1)[0])},
            "retry_config": RETRY,
        }
        if settings.connection_string:
            parts = connection_string_parts(settings.name, settings.connection_string)
            if parts.get("accountkey"):
                options["credential_provider"] = _KeySas(settings.account_name, parts["accountkey"], container)
            else:
                options["sas_key"] = parts["sharedaccesssignature"].lstrip("?")
        else:
            from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
            from obstore.auth.azure import AzureCredentialProvider

            credential = (ManagedIdentityCredential(client_id=settings.client_id)
                          if settings.credential_kind == "managedidentity"
                          else DefaultAzureCredential(managed_identity_client_id=settings.client_id))
            options["credential_provider"] = AzureCredentialProvider(credential=credential)
        return AzureStore(container, account_name=settings.account_name, endpoint=url, **options)

    def call(self, method: str, sync: Callable[[], Any], asynchronous: Callable[[], Any], *, connection: str,
             container: str, blob: str, subject: str, what: str, conditions: Mapping[str, str] | None = None):
        """Send one request (`method` on `blob` of `container`): `sync()` or, near the deadline,
        `asynchronous()` (a coroutine factory) bounded by it. Absent / exists / changed pass through as
        obstore's exceptions; anything else is ours. `conditions`: the conditional headers object_store
        sends for this call (e.g. If-None-Match: * for a create), shown to the request counter."""
        request = f"{method} ({what})"
        left = deadline.check(request)
        if self._counter is not None:  # the SDK's raw_request_hook, shown the same (method, URL, headers)
            self._counter(_Sent(_HttpRequest(method, lambda: (
                f"{self._settings[connection].blob_service_url}/{container}/{quote(blob)}",
                {CLIENT_REQUEST_ID_HEADER: self._request_id, **(conditions or {})}))))
        near = left is not None and left <= LONGEST_CALL_SECONDS
        try:
            return _LOOP.run(asynchronous, left) if near else sync()
        except PASSTHROUGH:
            raise
        except TimeoutError if near else ():  # the loop's wait: the deadline passed (not a request's own)
            failure = None
        except (BaseError, OSError) as err:
            failure = object_store_error(err, connection=connection, subject=subject, what=what)
        # Raised outside the handler, so it carries no context: object_store's message names the
        # request's URL (redacted under a SAS, but never relied on).
        if failure is None:
            deadline.check(request)  # the deadline's own error
            failure = DeadlineExceeded(f"{subject}: the invocation's deadline passed while {what} (the storage "
                                       "request was cut at it); the next attempt resumes the work")
        raise failure
