"""The one place storage SDK failures become our errors, one policy per status.

- 401/403: `AccessDenied`, not retryable (Event Grid redelivering cannot grant a role): the message
  names the connection setting, the permission missing and how to grant it; `hint` holds the advice.
- 429 (throttling), 503 (server busy) and other 5xx: `ReplicaUnreachable`, retryable.
- no answer (connection refused, timeout): `ReplicaUnreachable`, retryable.
- anything else the SDK raises here: `ReplicaUnreachable`, retryable (the next attempt decides).

Classification is by status code and type, never by message text. 404/409/412 are decisions of the
caller (absent, exists, changed) and are passed through by callers before they get here.
"""

from __future__ import annotations

import contextlib

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from shared import deadline
from shared.errors import AccessDenied, DeadlineExceeded, ReplicationError, ReplicaUnreachable

READ_ROLE = "Storage Blob Data Reader"
WRITE_ROLE = "Storage Blob Data Contributor"
TABLE_ROLE = "Storage Table Data Contributor"
_WRITING = ("writing", "creating", "deleting", "copying", "uploading", "acquiring", "renewing", "releasing")


def access_hint(connection: str, role: str) -> str:
    """How to grant what is missing, for a connection setting (never its value)."""
    return (f"grant the identity of connection {connection} the {role} role on that account "
            f"(az role assignment create --role \"{role}\" --assignee <principal id> --scope <storage account id>), "
            f"or, if {connection} holds an account key or SAS, replace it with a valid one (a SAS needs "
            f"{'read and list' if role == READ_ROLE else 'read, list, write, create and delete'} permissions)")


def classify(err: Exception, *, connection: str, subject: str, what: str, role: str | None = None) -> ReplicationError:
    """Our error for a storage SDK failure; raise it `from err`.

    Args:
        err: the azure.core exception.
        connection: the connection setting's name (e.g. WESTEU_STORAGE), never its value.
        subject: what was being accessed (a store's description).
        what: the operation, e.g. "reading _delta_log/00000000000000000042.json".
        role: the role the operation needs; default from `what` (reads: Reader, writes: Contributor).
    """
    if isinstance(err, (ServiceRequestError, ServiceResponseError)):
        return no_answer(type(err).__name__, subject=subject, what=what)
    status = getattr(err, "status_code", None)
    code = getattr(err, "error_code", None)
    if isinstance(err, ClientAuthenticationError) and status is None:
        # The identity got no token (no managed identity, wrong client id): no request was refused.
        status, code = 401, "NoToken"
    return by_status(status, code, connection=connection, subject=subject, what=what, role=role)


def no_answer(kind: str, *, subject: str, what: str) -> ReplicationError:
    """Our error for a request that got no answer (refused, timed out): retryable, or the deadline's."""
    left = deadline.remaining()
    if left is not None and left < 1.0:  # the attempt's timeouts were capped at what was left
        return DeadlineExceeded(f"{subject}: the invocation's deadline passed while {what} (the storage "
                                f"request was cut at it, {kind}); the next attempt resumes the work")
    return ReplicaUnreachable(f"{subject}: storage did not answer while {what} ({kind}); "
                              "it will be retried. Check the account is reachable.")


def by_status(status: int | None, code: str | None, *, connection: str, subject: str, what: str,
              role: str | None = None) -> ReplicationError:
    """Our error for a storage answer's HTTP status (either client library's), one policy per status."""
    if status in (401, 403):
        role = role or (WRITE_ROLE if what.startswith(_WRITING) else READ_ROLE)
        hint = access_hint(connection, role)
        also = " (a replica needs Storage Blob Data Contributor)" if role == READ_ROLE else ""
        return AccessDenied(f"{subject}: storage refused access while {what} (HTTP {status} {code}); the "
                            f"credentials of connection {connection} lack {role}{also}: {hint}. Not retried.",
                            hint=hint)
    if status == 429 or status == 503:
        return ReplicaUnreachable(f"{subject}: storage is throttling while {what} (HTTP {status} {code}); "
                                  "it will be retried.")
    return ReplicaUnreachable(f"{subject}: storage failed while {what} (HTTP {status} {code}); it will be retried.")


@contextlib.contextmanager
def storage_errors(*, connection: str, subject: str, what: str, role: str | None = None, passthrough: tuple = ()):
    """Run a block of storage calls, turning SDK failures into ours (see `classify`).

    `passthrough`: exception types the caller handles itself (e.g. ResourceNotFoundError).
    """
    try:
        yield
    except passthrough:
        raise
    except (ServiceRequestError, ServiceResponseError, HttpResponseError) as err:
        raise classify(err, connection=connection, subject=subject, what=what, role=role) from err


def object_store_error(err: Exception, *, connection: str, subject: str, what: str) -> ReplicationError:
    """Our error for an obstore (object_store) failure other than absent / exists / changed, by its type:
    401/403 have their own types; every other failure (5xx, throttling, no answer) is one type, so it
    is retryable, or the deadline's when the invocation's time ran out. Never the library's message
    (it may carry a URL)."""
    from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

    if isinstance(err, PermissionDeniedError):
        return by_status(403, "PermissionDenied", connection=connection, subject=subject, what=what)
    if isinstance(err, UnauthenticatedError):
        return by_status(401, "Unauthenticated", connection=connection, subject=subject, what=what)
    left = deadline.remaining()
    if left is not None and left < 1.0:
        return no_answer(type(err).__name__, subject=subject, what=what)
    return ReplicaUnreachable(f"{subject}: storage failed or did not answer while {what} ({type(err).__name__}); "
                              "it will be retried. Check the account is reachable.")
