"""Read-only, one-blob, time-limited SAS URLs: the only credential handed to the storage service
for a server-side copy (never the account key, never a SAS connection string's own token)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlparse

from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

SAS_LIFETIME = timedelta(minutes=10)
# Server-side copies take their source SAS lifetime from the file's size at this assumed
# worst-case rate, so a large copy is never cut off by its own credential.
_SLOWEST_COPY_BYTES_PER_SECOND = 8 * 1024 * 1024
_MAX_SAS_LIFETIME = timedelta(hours=24)
_CLOCK_SKEW = timedelta(minutes=5)


def sas_lifetime(size: int | None) -> timedelta:
    """How long a copy source SAS stays valid: long enough for the copy at a slow rate, at least 10 minutes."""
    if not size:
        return SAS_LIFETIME
    needed = timedelta(seconds=size / _SLOWEST_COPY_BYTES_PER_SECOND) + SAS_LIFETIME
    return min(max(SAS_LIFETIME, needed), _MAX_SAS_LIFETIME)


class SourceSigner:
    """Makes read-only, one-blob, time-limited SAS URLs for server-side copy from an account.

    Derived from the account key or a user-delegation key. A SAS connection string's own
    token is never forwarded (it may be account-wide, writable and long-lived): such
    sources are streamed through this process instead.
    """

    def __init__(self, service: BlobServiceClient) -> None:
        self._service = service
        self._lock = threading.Lock()
        self._delegation_key = None
        self._delegation_expiry: datetime | None = None

    def signed_url(self, container: str, blob: str, *, lifetime: timedelta = SAS_LIFETIME) -> str | None:
        """A URL carrying a read-only SAS for this one blob, or None when none can be derived."""
        client = self._service.get_blob_client(container, blob)
        credential = self._service.credential
        now = datetime.now(timezone.utc)
        common = dict(
            account_name=self._service.account_name,
            container_name=container,
            blob_name=blob,
            permission=BlobSasPermissions(read=True),
            start=now - _CLOCK_SKEW,
            expiry=now + lifetime,
        )
        account_key = getattr(credential, "account_key", None)
        if account_key:
            return f"{client.url.split('?')[0]}?{generate_blob_sas(account_key=account_key, **common)}"
        if hasattr(credential, "get_token"):
            key = self._user_delegation_key(now, lifetime)
            return f"{client.url.split('?')[0]}?{generate_blob_sas(user_delegation_key=key, **common)}"
        return None  # a SAS connection string: nothing narrower can be derived from it

    def _user_delegation_key(self, now: datetime, lifetime: timedelta):
        # One key serves many SAS tokens; a SAS cannot outlive the key that signed it.
        with self._lock:
            needed = now + lifetime + timedelta(minutes=30)
            if self._delegation_key is None or self._delegation_expiry < needed:
                expiry = max(now + timedelta(hours=2), needed)
                self._delegation_key = self._service.get_user_delegation_key(now - _CLOCK_SKEW, expiry)
                self._delegation_expiry = expiry
            return self._delegation_key


def sas_permissions(url: str) -> tuple[str | None, str | None]:
    """(`sp`, `sr`) of a SAS URL, for tests and diagnostics; (None, None) without a SAS."""
    query = parse_qs(urlparse(url).query)
    return (query.get("sp", [None])[0], query.get("sr", [None])[0])
