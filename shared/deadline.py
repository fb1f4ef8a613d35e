"""The invocation's deadline: set once where an invocation starts, checked by every storage request.

A context variable, so it needs no parameter through every layer: the runtime's executors run each
task in a copy of its submitter's context (shared/executors.py), so copies and replica tasks in
pool threads see the deadline of the invocation that submitted them, and the storage clients'
request hook (shared/storage/clients.py) checks it before every attempt and caps the attempt's
connect and read timeouts at what is left. A server-side copy polled for hours, a lease waited
on, a black-holed endpoint: each ends at the deadline with `DeadlineExceeded` (retryable). The
function app's own tables get RECORD_GRACE_SECONDS more, so the outcome of work stopped at the
deadline is still recorded (status, alerts) before the host's functionTimeout.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar

from shared.errors import DeadlineExceeded

RECORD_GRACE_SECONDS = 30.0

_deadline: ContextVar[tuple[float, str] | None] = ContextVar("invocation_deadline", default=None)


@contextmanager
def within(seconds: float | None, what: str):
    """Run the block with a deadline `seconds` from now (never later than one already set)."""
    if seconds is None:
        yield
        return
    end = time.monotonic() + seconds
    current = _deadline.get()
    token = _deadline.set((end, what) if current is None or end < current[0] else current)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left (never below 0), or None when no deadline is set."""
    current = _deadline.get()
    return None if current is None else max(0.0, current[0] - time.monotonic())


def check(request: str, *, grace: float = 0.0) -> float | None:
    """Seconds left before `request` may be sent (`grace` seconds past the deadline: recording
    what the invocation did, in the function app's tables); raises when none are.

    Raises:
        DeadlineExceeded: the deadline (plus `grace`) has passed.
    """
    current = _deadline.get()
    if current is None:
        return None
    left = current[0] + grace - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded(f"{current[1]}: its deadline passed before {request}; the work stopped there "
                               "(every step is safe to stop at) and the next attempt resumes it")
    return left
