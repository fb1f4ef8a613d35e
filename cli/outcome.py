"""Exit codes and the one-line error every CLI command ends with when it cannot do its job.

No traceback reaches an operator: whatever a command raises becomes one line on stderr saying what
failed, where (the connection setting and endpoint) and what to do, and one of the exit codes below.
"""

from __future__ import annotations

OK = 0
PROBLEM = 1  # the command ran and found a problem, or refused safely (nothing was changed)
BAD_INPUT = 2  # bad arguments or configuration
STORAGE = 3  # storage refused access, does not exist, did not answer, or the topology cannot be read
TIMED_OUT = 4  # --timeout reached
INTERRUPTED = 130

EXIT_CODES = """exit codes:
  0  done; everything checked is healthy (or lagging, which replication heals)
  1  done, and it found a problem (a location diverged, unreachable or in error, a verify mismatch,
     a replica that failed to sync, no readable location), or it refused safely (nothing was changed)
  2  bad arguments or configuration (an unknown table or location, a missing setting)
  3  storage refused access, a container or table does not exist, storage did not answer,
     or the topology cannot be read
  4  the command did not finish within --timeout (the message names the endpoint it waited on)
  130 interrupted (Ctrl-C)"""

_MAX_LINE = 600


def one_line(text: str) -> str:
    """Collapse whitespace (SDK messages carry newlines and XML) and bound the length."""
    line = " ".join(str(text).split())
    return line if len(line) <= _MAX_LINE else line[:_MAX_LINE - 3] + "..."


def refused_access(err: BaseException) -> bool:
    """Whether a 401/403 is anywhere in the chain of causes (AccessDenied, or the SDK's status)."""
    from shared.errors import AccessDenied

    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, AccessDenied) or getattr(err, "status_code", None) in (401, 403):
            return True
        err, seen = err.__cause__, seen + 1
    return False


def _where(err) -> str:
    from cli.deadline import describe, endpoint_of, last_failed

    response = getattr(err, "response", None)
    request = getattr(response, "request", None)
    url = getattr(request, "url", None)
    return describe(endpoint_of(url) if url else last_failed())


def classify(err: BaseException) -> tuple[int, str]:
    """(exit code, the one line without its `error: ` prefix) for anything a command raised."""
    from azure.core.exceptions import (
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    from cli.deadline import CommandTimedOut
    from shared.errors import (
        AccessDenied,
        ConfigError,
        PromotionRefused,
        RejoinRefused,
        ReplicaUnreachable,
        ReplicationError,
        TopologyConflict,
        TopologyUnavailable,
    )

    if isinstance(err, CommandTimedOut):
        return TIMED_OUT, str(err)
    if isinstance(err, KeyboardInterrupt):
        return INTERRUPTED, "interrupted; what was done so far stays (every step is safe to run again)"
    if isinstance(err, ConfigError):
        return BAD_INPUT, str(err)
    if isinstance(err, AccessDenied):
        hint = getattr(err, "hint", "")
        return STORAGE, str(err) if not hint or hint in str(err) else f"{err} {hint}"
    if isinstance(err, (TopologyUnavailable, ReplicaUnreachable)):
        if refused_access(err) and "access denied" not in str(err):
            # Until storage raises AccessDenied itself: a refusal is not an outage.
            return STORAGE, f"access denied: {err}"
        return STORAGE, str(err)
    if isinstance(err, (PromotionRefused, RejoinRefused, TopologyConflict)):
        return PROBLEM, str(err)
    if isinstance(err, ReplicationError):
        return PROBLEM, str(err)
    if isinstance(err, ResourceNotFoundError):
        return STORAGE, (f"{_where(err)}: not found (HTTP 404 {err.error_code}); check the container and path "
                         "in the configuration, and that the account is the one you meant")
    if isinstance(err, HttpResponseError) and err.status_code in (401, 403):
        return STORAGE, (f"{_where(err)} refused access (HTTP {err.status_code} {err.error_code}); check that "
                         "connection's key or identity, and grant it Storage Blob Data Contributor (Reader for "
                         "read-only commands) on that account")
    if isinstance(err, HttpResponseError):
        return STORAGE, f"{_where(err)} failed (HTTP {err.status_code} {err.error_code}); try again"
    if isinstance(err, (ServiceRequestError, ServiceResponseError, ConnectionError, TimeoutError)):
        return STORAGE, (f"{_where(err)} did not answer ({type(err).__name__}); check that the account's "
                         "endpoint is reachable from here (region, network, firewall)")
    try:
        import requests

        if isinstance(err, requests.RequestException):
            return STORAGE, f"{_where(err)} did not answer ({type(err).__name__}); check that it is reachable"
    except ImportError:  # pragma: no cover - requests ships with azure-core
        pass
    if isinstance(err, SystemExit):
        return (err.code if isinstance(err.code, int) else BAD_INPUT), str(err.code or "")
    return PROBLEM, (f"unexpected {type(err).__name__}: {err}; nothing more was done. Run it again with -v "
                     "and report the log if it repeats")


def error_line(err: BaseException) -> tuple[int, str]:
    """(exit code, the complete line to print on stderr)."""
    from cli.deadline import describe, last_failed

    code, text = classify(err)
    if not text.strip() and not isinstance(err, SystemExit):
        text = f"{type(err).__name__} without a message; nothing more was done. Run it again with -v"
    failed = last_failed()
    if code == STORAGE and failed is not None:
        where = describe(failed)
        if where.split(" ")[0] not in text:  # say where, when the message itself does not
            text = f"{text} [at {where}]"
    text = one_line(text)
    if text.startswith("error: "):
        text = text[len("error: "):]
    return code, f"error: {text}" if text else ""
