"""The host's thread pools, with one owner (the runtime), whose tasks carry their submitter's context.

A task runs in a copy of the submitting thread's context variables, so the invocation deadline
(shared/deadline.py) follows work into the pools. The runtime builds one `Executors` from the
tuning and closes it; nothing else creates a pool.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import Future, ThreadPoolExecutor


MAINTENANCE_WORKERS = 16


class ContextPool(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose tasks run in a copy of the submitter's context."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


class Executors:
    """The pools of one runtime.

    Args:
        file_workers: file copies and commit reads (bounded: they hold connections and buffers).
        task_workers: one task per replica and event, and read-aheads.
    """

    def __init__(self, *, file_workers: int, task_workers: int) -> None:
        self.files = ContextPool(max_workers=file_workers, thread_name_prefix="copy")
        self.tasks = ContextPool(max_workers=task_workers, thread_name_prefix="replica")
        # The topology read beside a commit read, never queued behind replica tasks waiting their turn.
        self.topology = ContextPool(max_workers=4, thread_name_prefix="topology")
        # Snapshots and rejoin quarantines copy whole tables: on a pool of their own, so a
        # replicate_commit's copies never queue behind thousands of theirs.
        self.maintenance = ContextPool(max_workers=MAINTENANCE_WORKERS, thread_name_prefix="maintenance")

    def close(self) -> None:
        for pool in (self.files, self.tasks, self.topology, self.maintenance):
            pool.shutdown(wait=True)
