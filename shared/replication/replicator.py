"""Bring every replica of one table up to a version: data files first, commit JSON last.

Invariants protected here:
- a replica's `_delta_log/<v>.json` is written only after every file that commit
  references exists on the replica, and (at the head) only after version v-1 exists there;
  history below a readable run is written a batch at a time (catch_up.py);
- commits are written with the primary's exact bytes, by conditional create: an existing,
  different commit means the replica diverged, and it is never overwritten;
- checkpoint files are copied only once their version exists on the replica, and
  `_last_checkpoint` only moves forward, written last;
- one replica's failure never stops the others; the caller sees every outcome.

This module decides, once per event, what the event asks for (an `EventPlan`), then per
replica which path to take (one version, catch-up, seed, backfill); catch_up.py runs the
many-version paths and writer.py the copies and writes of one replica, each held, not inherited.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from typing import Callable

from shared import failpoints
from shared.config.model import TableConfig
from shared.config.tuning import Tuning
from shared.delta.compare import diverged, same_commit
from shared.delta.head import find_head, find_source_head
from shared.delta.log import (
    LogFileKind,
    TableRoot,
    commit_name,
    version_prefix,
)
from shared.delta.commit_digests import CommitDigests
from shared.delta.source_log import SourceLog, complete_checkpoints
from shared.executors import Executors
from shared.errors import (
    CommitNotFound,
    InvalidCommit,
    ReplicaDiverged,
    ReplicationError,
)
from shared.telemetry import metrics
from shared.replication.catch_up import CatchUp
from shared.replication.fence import WriteFence
from shared.replication.writer import ReplicaWriter, log
from shared.replication.outcome import (
    ReplicaOutcome,
    ReplicaState,
    unexpected,
)
from shared.replication.sequencer import Sequencer
from shared.storage.lease import LeaseStore, location_lease_name
from shared.storage.table_store import LogEntry, TableStore

CHECKPOINT_KINDS = (LogFileKind.CHECKPOINT, LogFileKind.CHECKPOINT_PART, LogFileKind.CHECKPOINT_V2,
                    LogFileKind.LAST_CHECKPOINT)


@dataclass(frozen=True)
class EventPlan:
    """What one invocation asks of every replica, decided once from the event."""

    target: int
    # The hot path: an event for a new commit; the replica one version behind is the usual case.
    one_version: bool = False
    # Bring the latest checkpoint and `_last_checkpoint` forward (checkpoint events, catch-up).
    sync_checkpoint: bool = False
    copy_crc: bool = False  # a `.crc` event
    backfill: bool = False  # a catch-up of a table with history "full"
    progress: Callable | None = None

    @classmethod
    def of(cls, version: int | None, kind: LogFileKind | None, target: int, progress, history: str) -> "EventPlan":
        return cls(target, one_version=version is not None and kind == LogFileKind.COMMIT and target > 0,
                   sync_checkpoint=version is None or kind in CHECKPOINT_KINDS, copy_crc=kind == LogFileKind.CRC,
                   backfill=version is None and history == "full", progress=progress)


class TableReplicator:
    """Replicates one table from its source to its replicas.

    Args:
        table: the table's configuration.
        source: the primary's store.
        replicas: replica name -> store, in configuration order.
        root: the primary's table root, to recognise absolute URIs inside the table.
        executors: the runtime's pools (file copies and commit reads; replica tasks), long-lived:
            starting threads per invocation costs milliseconds per commit.
        tuning: batch sizes (catch-up, backfill).
        sequencer: orders this process's concurrent events per replica location (shared by
            the replicators of one runtime).
        fence: reads the topology before every commit and `_last_checkpoint` write (fence.py).
    """

    def __init__(self, table: TableConfig, source: TableStore, replicas: dict[str, TableStore],
                 root: TableRoot, executors: Executors, *, tuning: Tuning, leases: "Callable[[], LeaseStore]",
                 sequencer: Sequencer | None = None, fence: WriteFence | None = None) -> None:
        self.table = table
        self.fence = fence  # None: no topology to check (a replicator outside a runtime)
        self._sequencer = sequencer or Sequencer()
        self._digests = CommitDigests()
        # Per replica, the commits this process wrote there (commit_digests.py): the next commit's event
        # reads nothing of the replica; the write fence, read before that commit, ends an epoch's trust.
        # Not for a group's tables: a consistent group promote trims the target's log within the epoch
        # (group_promote.py, under the lease the hot path does not take); the read of N-1 sees that.
        self._written = {} if table.group else {name: CommitDigests(capacity=256) for name in replicas}
        self._leases = leases
        self.source_store = source
        self.replicas = replicas
        self.root = root
        self.tuning = tuning
        self._files = executors.files
        self._tasks = executors.tasks

    def lease(self, store: TableStore, **kwargs):
        """The lease serialising replication and retention into one replica location, held in
        the function app's storage (never in the replica's account)."""
        return self._leases().hold(location_lease_name(*store.location_key), **kwargs)

    def source_log(self) -> SourceLog:
        """A fresh per-invocation view of the primary's log (reads made through it are shared);
        once told the topology's epoch (`at_epoch`), the digests of the commits it read are
        remembered for the next invocations."""
        return SourceLog(self.table, self.source_store, self.root, digests=self._digests)

    def replicate(self, version: int | None, *, log_file_kind: LogFileKind | None = None,
                  progress=None, source: SourceLog | None = None) -> list[ReplicaOutcome]:
        """Bring every replica up to at least `version` (None: the primary's head).

        Args:
            version: the version an event named, or None to catch up to the primary's head.
            log_file_kind: the kind of log file the event named; checkpoint events (and
                catch-up) also bring `_last_checkpoint` forward.
            source: this invocation's view of the primary's log, when reads were started already.

        Returns:
            One outcome per replica. Errors are captured per replica, never raised here.
        """
        if version is not None and version < 0:
            raise ValueError(f"a Delta version is never negative (got {version})")
        source = source or self.source_log()
        target = version
        if log_file_kind == LogFileKind.LAST_CHECKPOINT or version is None:
            hint = source.last_checkpoint()
            if version is None:
                target = find_source_head(source)
            elif hint is not None:
                target = hint[0]
        if target is None:
            return [ReplicaOutcome(name, ReplicaState.UP_TO_DATE) for name in self.replicas]
        plan = EventPlan.of(version, log_file_kind, target, progress, self.table.history)
        pool = self._tasks
        # Read ahead what the usual next step (the replica one version behind) needs, while
        # the replicas' heads are being looked up: it takes those round trips off the path.
        # SourceLog computes each read once, in whichever thread asks first, so a queued
        # read-ahead never blocks a replica task.
        if plan.one_version:  # what is in hand already (the event's commit, a remembered digest) needs no task
            prefetch = [pool.submit(read, v) for read, v, held in ((source.commit_bytes, target, source.holds_commit),
                                                                   (source.commit_entry, target - 1, source.knows_entry))
                        if not held(v)]
        else:
            prefetch = [pool.submit(source.entries_for, max(target - 1, 0), target)]
        if version is not None and log_file_kind == LogFileKind.COMMIT:
            rejected = self._reject_unusable_commit(source, target)
            if rejected is not None:
                for f in prefetch:
                    f.exception()
                return rejected
        if version is not None and log_file_kind in CHECKPOINT_KINDS:
            rejected = self._reject_unsafe_checkpoint(source, target)
            if rejected is not None:
                for f in prefetch:
                    f.exception()
                return rejected
        if len(self.replicas) == 1:  # one replica: its task runs here (a thread hop less per commit)
            outcomes = [self._replicate_one(name, store, source, plan) for name, store in self.replicas.items()]
        else:
            futures = [pool.submit(self._replicate_one, name, store, source, plan)
                       for name, store in self.replicas.items()]
            outcomes = [f.result() for f in futures]
        for f in prefetch:
            f.exception()  # errors were (or will be) raised where the result is used
        return outcomes

    def _reject_unusable_commit(self, source: SourceLog, version: int) -> list[ReplicaOutcome] | None:
        """Validate the commit an event names before any replica is touched.

        A truncated, unsafe or oversized commit is reported once (one WARNING) and gives every
        replica an `error` outcome with that cause; nothing is written anywhere, lease included.
        """
        try:
            source.commit(version)
        except CommitNotFound:
            return None  # replicas may already have it (a late event); each replica decides
        except ReplicationError as err:
            log.warning("commit.rejected table=%s version=%d retryable=%s error=%s", self.table.name, version,
                        err.retryable, err, extra={"table": self.table.name, "version": version})
            outcomes = [ReplicaOutcome(name, ReplicaState.ERROR, error=err) for name in self.replicas]
            for outcome in outcomes:
                metrics.record_outcome(self.table.name, outcome)
            return outcomes
        return None

    def _reject_unsafe_checkpoint(self, source: SourceLog, version: int) -> list[ReplicaOutcome] | None:
        """A checkpoint event: check every path the checkpoint names (sidecars, adds) before any replica
        is touched; a hostile one is reported once (one WARNING) and nothing of it is written anywhere."""
        try:
            names = complete_checkpoints(source.listing(version_prefix(version))).get(version)
            if names:
                source.check_checkpoint(names)
        except InvalidCommit as err:
            log.warning("checkpoint.rejected table=%s version=%d file=%s retryable=False error=%s", self.table.name,
                        version, names[0], err, extra={"table": self.table.name, "version": version})
            outcomes = [ReplicaOutcome(name, ReplicaState.ERROR, error=err) for name in self.replicas]
            for outcome in outcomes:
                metrics.record_outcome(self.table.name, outcome)
            return outcomes
        except ReplicationError:
            return None  # unreadable now: each replica's own path reports it
        return None

    # -- one replica ------------------------------------------------------------------
    def _replicate_one(self, name: str, store: TableStore, source: SourceLog, plan: EventPlan) -> ReplicaOutcome:
        started = time.monotonic()
        target = plan.target
        outcome = ReplicaOutcome(name, ReplicaState.UP_TO_DATE, progress=plan.progress)
        written = self._written.get(name) or CommitDigests(capacity=0)  # a replica added since: none known
        w = ReplicaWriter(self.table, name, store, source, outcome, self._files, self.fence, written=written)
        # The hot path: the commit's files start copying now, while the replica's head is looked
        # up and checked. They are invisible until their commit exists, which waits for the checks;
        # a replica that turns out diverged or already there costs at most this commit's files.
        # When this process wrote the previous commit there, nothing is looked up: no early copies.
        early = (self._start_early_copies(store, source, target)
                 if plan.one_version and written.entry(source.epoch, target - 1) is None else None)
        ordered = contextlib.ExitStack()
        try:
            if plan.one_version:  # after the lower versions in flight here: then this one is the next
                ordered.enter_context(self._sequencer.turn(store.location_key, target))
            head, entries = self._locate_head(store, target, expect_next=plan.one_version,
                                              known=written.entry(source.epoch, target - 1))
            outcome.head_before = head
            if early is not None and not (head is not None and head == target - 1):
                w.finish_copies(early)  # settled before anything else; catch-up redoes failures
                early = None
            there = next((e for e in entries if e.name == commit_name(target)), None)
            if head is not None and head >= target and there is not None:
                # A duplicate or late event: the commit is there; make sure it is the primary's.
                # Whatever the path (version 0 has no predecessor, a listing may hold lower
                # versions first): a foreign commit at the target is never "up to date".
                self._check_commit_matches(name, store, source, target, there)
            if head is not None and head == target - 1 and plan.one_version:
                # One version to go, the steady state: no lease and no listing. Concurrent
                # duplicates can at worst copy this one commit's files twice; the conditional
                # commit decides. Checkpoints and .crc files come with their own events.
                self.check_head_matches(name, store, source, head, target, entries, by_listing=False)
                commit = source.commit(target)
                if early is None:
                    failed = w.copy_files(commit.files)
                else:
                    failed, early = w.finish_copies(early), None
                if failed:
                    # Only N-1 was asked about: a late duplicate of a commit whose files the
                    # primary has since vacuumed lands here. If N is there, it is up to date.
                    there = store.log_entry(commit_name(target))
                    if there is None:
                        raise next(iter(failed.values()))
                    self._check_commit_matches(name, store, source, target, there)
                    created = False
                else:
                    failpoints.hit(failpoints.COMMIT_BEFORE, replica=name)
                    created = w.write_commit(commit)
                    failpoints.hit(failpoints.COMMIT_AFTER, replica=name)
                head = target
                # Not created: it was there with the primary's bytes (a duplicate event).
                outcome.state = ReplicaState.REPLICATED if created else ReplicaState.UP_TO_DATE
            elif head is None or head < target:
                self._validate_target(source, target)
                with self.lease(store) as waited:
                    if waited:
                        # Whoever held the lease may have done our work already.
                        head, entries = find_head(store, target)
                    if head is None or head < target:
                        if head is not None:
                            self.check_head_matches(name, store, source, head, target, entries)
                        outcome.lease = waited
                        try:
                            head = CatchUp(w, self.tuning).run(head, target)
                        finally:
                            outcome.lease = None
                        outcome.state = ReplicaState.REPLICATED
            if plan.copy_crc and head is not None and head >= target:
                w.copy_crc(target)
            if plan.sync_checkpoint or outcome.checkpoints:
                w.sync_checkpoint(head)
            outcome.head_after = head
            if outcome.seeded is not None:
                outcome.readable_seconds = time.monotonic() - started  # readable at head from here on
            if head is not None and self.table.history == "full" and (plan.backfill or outcome.seeded is not None):
                # History behind: catch-ups, and the invocation that seeded once the replica is
                # readable, backfill up to tuning.backfill_step_versions older versions, ascending.
                with self.lease(store):
                    outcome.history = CatchUp(w, self.tuning).backfill(head)
        except ReplicaDiverged as err:
            outcome.state, outcome.error = ReplicaState.DIVERGED, err
            w.log.warning("replica.diverged table=%s replica=%s error=%s", self.table.name, name, err)
        except ReplicationError as err:
            outcome.state, outcome.error = ReplicaState.ERROR, err
            w.log.warning("replica.failed table=%s replica=%s retryable=%s error=%s",
                          self.table.name, name, err.retryable, err)
        except Exception as err:  # noqa: BLE001 - one replica's surprise must not hide the others' outcomes
            outcome.state = ReplicaState.ERROR
            outcome.error = unexpected(err, f"table {self.table.name} replica {name}")
            w.log.exception("replica.failed table=%s replica=%s retryable=%s error=%s", self.table.name, name,
                            outcome.error.retryable, outcome.error)
        finally:
            outcome.seeded_paths = None  # only for this invocation's backfill
            ordered.close()
            if early is not None:
                w.finish_copies(early)  # no copy outlives the invocation that started it
        outcome.seconds = time.monotonic() - started
        metrics.record_outcome(self.table.name, outcome)
        return outcome

    def _start_early_copies(self, store: TableStore, source: SourceLog, target: int) -> dict | None:
        """Start copying the files of commit `target` (read and validated already); None when
        the primary has no such commit (a late event: the replica decides)."""
        try:
            commit = source.commit(target)
        except Exception:  # noqa: BLE001 - the ordinary path reads it again and reports the error
            return None
        unique = {f.path: f for f in commit.files}
        return {self._files.submit(store.copy_file_from, source.store, f.path, expected_size=f.size): f.path
                for f in unique.values()}

    def _validate_target(self, source: SourceLog, target: int) -> None:
        """Read and validate the target commit before anything is written (a lease, a file):
        an unusable commit (truncated, unsafe, too large) stops here with nothing touched."""
        try:
            source.commit(target)
        except CommitNotFound:
            pass  # a version defined by a checkpoint alone, or cleaned up: catch-up decides

    def _locate_head(self, store: TableStore, target: int, *, expect_next: bool = False,
                     known: LogEntry | None = None) -> tuple[int | None, list[LogEntry]]:
        """Two HEAD requests (in parallel) answer the common cases; otherwise search listings.

        `expect_next` (an event for a new commit): one HEAD, of target-1, or none when this process
        wrote target-1 there at this epoch (`known`). When it is there the replica is taken to be at
        target-1; if it already holds target (a duplicate event), the conditional commit write finds
        it and compares it, as the second HEAD would have.
        """
        if target == 0:
            return find_head(store, target)
        if expect_next and known is not None:
            return target - 1, [known]
        if expect_next:
            before = store.log_entry(commit_name(target - 1))
            return (target - 1, [before]) if before is not None else find_head(store, target)
        # The file pool, not the task pool this runs in: a task waiting on its own pool can deadlock.
        at = self._files.submit(store.log_entry, commit_name(target))
        before = store.log_entry(commit_name(target - 1))
        current = at.result()
        if current is not None:
            return target, [current]  # already there (a duplicate or late event)
        if before is not None:
            return target - 1, [before]
        return find_head(store, target)

    def _check_commit_matches(self, name: str, store: TableStore, source: SourceLog, version: int,
                              mine: LogEntry) -> None:
        try:
            data = source.commit_bytes(version)
        except CommitNotFound:
            return  # the primary cleaned up this commit; nothing left to compare with
        theirs = LogEntry(mine.name, len(data), content_md5=hashlib.md5(data).digest())  # noqa: S324 - content check
        if not same_commit(mine, theirs, lambda: store.get_log_file(commit_name(version)), lambda: data):
            raise diverged(name, self.table.name, version)

    def check_head_matches(self, name: str, store: TableStore, source: SourceLog, head: int, target: int,
                           entries: list[LogEntry], *, by_listing: bool = True) -> None:
        """Refuse to build on a head commit that is not the primary's (a foreign write).

        Compares size and Content-MD5 from the listings; reads both commits only when an
        MD5 is missing (ADLS writes have none) and the sizes agree.
        """
        mine = next((e for e in entries if e.name == commit_name(head)), None)
        if mine is None:
            return  # head defined by a checkpoint alone (seeded); nothing to compare
        if by_listing:
            theirs = next((e for e in source.entries_for(head, target) if e.name == mine.name), None)
        else:
            theirs = source.commit_entry(head)
        if theirs is None:
            return  # the primary cleaned up this commit; nothing left to compare with
        if not same_commit(mine, theirs, lambda: store.get_log_file(mine.name), lambda: source.commit_bytes(head)):
            raise diverged(name, self.table.name, head)
