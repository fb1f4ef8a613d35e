"""Version order among one process's concurrent invocations for the same replica location.

Events for versions N and N+1 often run at once (a busy table, several invocations per host).
Without order, N+1 finds the replica at N-1 while N is still in flight and takes the slow
path: a lease in host storage and a listing, then it writes N itself while N's invocation
waits for the lease. Here N+1 waits (its files already copying) until every lower version of
this process has finished, then finds N written and takes the one-version fast path.

Only an optimisation: correctness rests on the conditional commit and the leases, so a wait is
bounded (5 s) and, when it runs out, the invocation goes on as it would have without this.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

# Well under Event Grid's 30 s delivery timeout: a longer wait plus the work would get the
# event redelivered while it still runs.
WAIT_SECONDS = 5.0


class Sequencer:
    """Registers each invocation's version per key; one waits while a lower version is registered."""

    def __init__(self, wait_seconds: float = WAIT_SECONDS) -> None:
        self._wait = wait_seconds
        self._cond = threading.Condition()
        self._versions: dict[Hashable, Counter] = {}

    @contextmanager
    def turn(self, key: Hashable, version: int) -> Iterator[bool]:
        """Hold `version`'s place for `key`; yields whether every lower version finished in time."""
        deadline = time.monotonic() + self._wait
        with self._cond:
            versions = self._versions.setdefault(key, Counter())
            versions[version] += 1  # registered while waiting, so a higher version waits for this one too
            while (lower := any(v < version for v in versions)) and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
        try:
            yield not lower
        finally:
            with self._cond:
                versions[version] -= 1
                if versions[version] == 0:
                    del versions[version]
                if not versions:
                    self._versions.pop(key, None)
                self._cond.notify_all()

    def waiting(self, key: Hashable) -> int:
        """How many invocations hold or await a turn for `key` (for tests)."""
        with self._cond:
            return sum(self._versions.get(key, Counter()).values())
