"""Bring every replica of one table up to a version: data files first, commit JSON last.

Invariants protected here:
- a replica's `_delta_log/<v>.json` is written only after every file that commit
  references exists on the replica, and only after version v-1 exists there;
- commits are written with the primary's exact bytes, by conditional create: an existing,
  different commit means the replica diverged, and it is never overwritten;
- checkpoint files are copied only once their version exists on the replica, and
  `_last_checkpoint` only moves forward, written last;
- one replica's failure never stops the others; the caller sees every outcome.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable

from shared import failpoints
from shared.config.model import TableConfig
from shared.delta.head import find_head, find_source_head
from shared.delta.log import (
    LogFileKind,
    ReferencedFile,
    TableRoot,
    commit_name,
    parse_log_name,
    version_prefix,
)
from shared.delta.source_log import (
    CommitDigests,
    SourceCommit,
    SourceLog,
    complete_checkpoints,
)
from shared.errors import (
    CommitNotFound,
    DataFileMissing,
    ReplicaDiverged,
    ReplicationError,
)
from shared.health import metrics
from shared.replication.history import MissingHistory, missing_history, primary_bottom
from shared.replication.outcome import (
    ReplicaOutcome,
    ReplicaState,
    is_vacuum_end,
    unexpected,
)
from shared.replication.sequencer import Sequencer
from shared.storage.lease import LeaseStore, location_lease_name
from shared.storage.table_store import LogEntry, TableStore

log = logging.getLogger(__name__)

# Versions whose files are copied together before their commits are written in order;
# keeps the replica advancing steadily while it catches up. A batch also ends once its
# commits hold BATCH_COMMIT_BYTES (it always takes at least one commit), so memory per
# catching-up replica is at most two batches (this one and the read-ahead), whatever the lag.
BATCH_VERSIONS = 64
# Versions of history backfilled per catch-up invocation (the lag check's timer or the CLI);
# each step resumes where the previous one stopped, found by listing the replica.
BACKFILL_STEP_VERSIONS = 5000
BATCH_COMMIT_BYTES = 4 * 1024 * 1024


@dataclass
class _Batch:
    commits: list = field(default_factory=list)  # SourceCommit, in version order
    copies: dict = field(default_factory=dict)  # copy future -> path
    known_present: int = 0  # files not copied: the seed of this invocation copied them
    error: ReplicationError | None = None


class _Ahead:
    """A call run on a thread of its own (the next batch's reads, while this one is written).
    Not a pool task: a replica task waiting on its own pool could deadlock it."""

    def __init__(self, fn, *args, **kwargs) -> None:
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), name="batch-ahead", daemon=True)
        self._thread.start()

    def _run(self, fn, args, kwargs) -> None:
        try:
            self._value = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - re-raised in result()
            self._error = err

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


class TableReplicator:
    """Replicates one table from its source to its replicas.

    Args:
        table: the table's configuration.
        source: the primary's store.
        replicas: replica name -> store, in configuration order.
        root: the primary's table root, to recognise absolute URIs inside the table.
        file_pool: a shared, bounded pool for file copies.
        sequencer: orders this process's concurrent events per replica location (shared by
            the replicators of one runtime).
    """

    def __init__(self, table: TableConfig, source: TableStore, replicas: dict[str, TableStore],
                 root: TableRoot, file_pool: ThreadPoolExecutor, task_pool: ThreadPoolExecutor | None = None, *,
                 leases: "Callable[[], LeaseStore]",
                 sequencer: Sequencer | None = None) -> None:
        self.table = table
        self._sequencer = sequencer or Sequencer()
        self._digests = CommitDigests()
        self._leases = leases
        self.source_store = source
        self.replicas = replicas
        self.root = root
        self._files = file_pool
        # Long-lived: starting threads per invocation costs milliseconds per commit.
        self._tasks = task_pool or ThreadPoolExecutor(max_workers=16, thread_name_prefix="replica")

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
        checkpoint_kinds = (LogFileKind.CHECKPOINT, LogFileKind.CHECKPOINT_PART, LogFileKind.CHECKPOINT_V2,
                            LogFileKind.LAST_CHECKPOINT)
        always_sync = version is None or log_file_kind in checkpoint_kinds
        pool = self._tasks
        # Read ahead what the usual next step (the replica one version behind) needs, while
        # the replicas' heads are being looked up: it takes those round trips off the path.
        # SourceLog computes each read once, in whichever thread asks first, so a queued
        # read-ahead never blocks a replica task.
        fast = version is not None and log_file_kind == LogFileKind.COMMIT and target > 0
        if fast:
            prefetch = [pool.submit(source.commit_bytes, target), pool.submit(source.commit_entry, target - 1)]
        else:
            prefetch = [pool.submit(source.entries_for, max(target - 1, 0), target)]
        crc = log_file_kind == LogFileKind.CRC
        if version is not None and log_file_kind == LogFileKind.COMMIT:
            rejected = self._reject_unusable_commit(source, target)
            if rejected is not None:
                for f in prefetch:
                    f.exception()
                return rejected
        backfill = version is None and self.table.history == "full"
        futures = [pool.submit(self._replicate_one, name, store, source, target, always_sync, progress, fast, crc,
                               backfill=backfill)
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

    # -- one replica ------------------------------------------------------------------
    def _replicate_one(self, name: str, store: TableStore, source: SourceLog, target: int,
                       always_sync: bool, progress=None, fast: bool = False, crc: bool = False, *,
                       backfill: bool = False) -> ReplicaOutcome:
        started = time.monotonic()
        outcome = ReplicaOutcome(name, ReplicaState.UP_TO_DATE, progress=progress)
        fields = {"table": self.table.name, "replica": name}
        # The hot path: the commit's files start copying now, while the replica's head is looked
        # up and checked. They are invisible until their commit exists, which waits for the checks;
        # a replica that turns out diverged or already there costs at most this commit's files.
        early = self._start_early_copies(store, source, target) if fast else None
        ordered = contextlib.ExitStack()
        try:
            if fast:  # after the lower versions in flight here: then this one is the next
                ordered.enter_context(self._sequencer.turn(store.location_key, target))
            head, entries = self._locate_head(store, target, expect_next=fast)
            outcome.head_before = head
            if early is not None and not (head is not None and head == target - 1):
                self._finish_copies(early, outcome)  # settled before anything else; catch-up redoes failures
                early = None
            if fast and head == target and entries and entries[0].name == commit_name(target):
                # A duplicate or late event: the commit is there; make sure it is the primary's.
                self._check_commit_matches(name, store, source, target, entries[0])
            if head is not None and head == target - 1 and fast:
                # One version to go, the steady state: no lease and no listing. Concurrent
                # duplicates can at worst copy this one commit's files twice; the conditional
                # commit decides. Checkpoints and .crc files come with their own events.
                self.check_head_matches(name, store, source, head, target, entries, by_listing=False)
                commit = source.commit(target)
                if early is None:
                    failed = self._copy_files(store, source, commit.files, outcome)
                else:
                    failed, early = self._finish_copies(early, outcome), None
                if failed:
                    raise next(iter(failed.values()))
                failpoints.hit(failpoints.COMMIT_BEFORE, replica=name)
                created = self._write_commit(name, store, commit, outcome)
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
                        head = self._catch_up(name, store, source, head, target, outcome)
                        outcome.state = ReplicaState.REPLICATED
            if crc and head is not None and head >= target:
                self._copy_crc(store, source, target, outcome)
            if always_sync or outcome.checkpoints:
                self._sync_checkpoint(name, store, source, head, outcome)
            outcome.head_after = head
            if outcome.seeded is not None:
                outcome.readable_seconds = time.monotonic() - started  # readable at head from here on
            if head is not None and self.table.history == "full" and (backfill or outcome.seeded is not None):
                # History behind: catch-ups, and the invocation that seeded once the replica is
                # readable, backfill up to BACKFILL_STEP_VERSIONS older versions, ascending.
                with self.lease(store):
                    outcome.history = self._backfill(name, store, source, head, outcome)
        except ReplicaDiverged as err:
            outcome.state, outcome.error = ReplicaState.DIVERGED, err
            log.warning("replica.diverged table=%s replica=%s error=%s", self.table.name, name, err, extra=fields)
        except ReplicationError as err:
            outcome.state, outcome.error = ReplicaState.ERROR, err
            log.warning("replica.failed table=%s replica=%s retryable=%s error=%s",
                        self.table.name, name, err.retryable, err, extra=fields)
        except Exception as err:  # noqa: BLE001 - one replica's surprise must not hide the others' outcomes
            outcome.state = ReplicaState.ERROR
            outcome.error = unexpected(err, f"table {self.table.name} replica {name}")
            log.exception("replica.failed table=%s replica=%s retryable=%s error=%s", self.table.name, name,
                          outcome.error.retryable, outcome.error, extra=fields)
        finally:
            outcome.seeded_paths = None  # only for this invocation's backfill
            ordered.close()
            if early is not None:
                self._finish_copies(early, outcome)  # no copy outlives the invocation that started it
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

    def _catch_up(self, name: str, store: TableStore, source: SourceLog, head: int | None,
                  target: int, outcome: ReplicaOutcome) -> int:
        """Copy versions head+1..target; seed from a checkpoint when the log cannot supply them."""
        start = 0 if head is None else head + 1
        # Listing from the head itself shares one request with the divergence check.
        entries = source.entries_for(start if head is None else head, target)
        present = {lf.version for e in entries if (lf := parse_log_name(e.name)) and lf.kind == LogFileKind.COMMIT}
        if target not in present and target not in complete_checkpoints(entries):
            raise CommitNotFound(
                f"table {self.table.name}: version {target} has no commit on the primary "
                f"({self.source_store.description}); it was never written, or was deleted."
            )
        # Readable first: an empty replica of a table with a checkpoint starts at the primary's
        # newest checkpoint; older versions are backfilled by later catch-ups (history "full").
        # Never past the version asked for: an event for an older version replays from version 0.
        found = source.latest_checkpoint(at_least=start) if head is None else None
        if found is not None and found[0] > target:
            found = None
        if found is not None or start not in present:
            # Also a replica behind the primary's log cleanup: jump to the newest checkpoint.
            found = found or source.latest_checkpoint(at_least=start)
            if found is None:
                raise CommitNotFound(
                    f"table {self.table.name}: replica {name} needs version {start}, which the primary "
                    f"no longer has, and the primary has no checkpoint at or after it; re-create the replica."
                )
            head = self._seed(name, store, source, found[0], found[1], outcome)
            outcome.seeded = head
            if head >= target:
                return head
            start = head + 1
            entries = source.entries_for(start, target)
        return self._write_versions(name, store, source, start, target, entries, outcome)

    def _write_versions(self, name: str, store: TableStore, source: SourceLog, start: int, target: int,
                        entries: list[LogEntry], outcome: ReplicaOutcome, *, in_order: bool = True) -> int:
        """Write versions start..target (version start-1 is on the replica), each commit after
        its files, with the `.crc` and checkpoint files of each version after its commit.

        `in_order=False` (history below a readable run only) writes each batch's commits at
        once: a reader of a version whose chain still has a hole gets an error (delta-rs:
        "Expected contiguous commit files"; Spark: versions not contiguous), never other rows.
        Returns the last version written."""
        head = start - 1
        checkpoints = complete_checkpoints(entries)
        crcs = {lf.version for e in entries if (lf := parse_log_name(e.name)) and lf.kind == LogFileKind.CRC}
        # Pipelined: the next batch's commits are read and its files copied while this batch's
        # commits are written, in order. Files landing early are harmless: nothing references
        # them until their own commit exists.
        # Whether to ask before copying: when most of the last finished batch's files were on
        # the replica already (history whose files a seed copied), a HEAD beats a failed copy.
        probe = False
        # Below a readable run, files this invocation's seed copied are there: no request for them.
        known = None if in_order else outcome.seeded_paths
        upcoming = self._start_batch(store, source, start, target, known=known)
        try:
            while upcoming is not None:
                current, upcoming = upcoming, None
                if isinstance(current, _Ahead):
                    current = current.result()
                following = current.commits[-1].version + 1 if current.commits else None
                if following is not None and following <= target and current.error is None:
                    # Read on a thread of its own while this batch is finished and written.
                    upcoming = _Ahead(self._start_batch, store, source, following, target, probe=probe,
                                      known=known)
                outcome.files_present += current.known_present
                present = outcome.files_present
                failed = self._finish_copies(current.copies, outcome)
                probe = 2 * (outcome.files_present - present) > len(current.copies)
                if not in_order:
                    head = self._write_batch_at_once(name, store, source, current, failed, crcs, checkpoints,
                                                     outcome, head)
                for commit in current.commits if in_order else []:
                    missing = next((f.path for f in commit.files if f.path in failed), None)
                    if missing is not None:
                        raise failed[missing]
                    failpoints.hit(failpoints.COMMIT_BEFORE, replica=name)
                    self._write_commit(name, store, commit, outcome)
                    failpoints.hit(failpoints.COMMIT_AFTER, replica=name)
                    head = commit.version
                    if head in crcs:
                        self._copy_log_files(store, source, [f"{head:020d}.crc"], outcome)
                    if head in checkpoints:
                        self._copy_checkpoint(store, source, checkpoints[head], outcome)
                current.commits.clear()  # this batch's commit bytes are no longer needed
                if current.error is not None:
                    raise current.error
        finally:
            self._abandon(upcoming)  # no copy outlives the invocation that started it
        return head

    def _write_batch_at_once(self, name: str, store: TableStore, source: SourceLog, batch: _Batch,
                             failed: dict, crcs: set[int], checkpoints: dict[int, list[str]],
                             outcome: ReplicaOutcome, head: int) -> int:
        """Write a batch's commits concurrently (those before the first with a failed file), then
        their `.crc` and checkpoint files; raise the first error after all writes settled."""
        ready, error = [], None
        for commit in batch.commits:
            missing = next((f.path for f in commit.files if f.path in failed), None)
            if missing is not None:
                error = failed[missing]
                break
            ready.append(commit)

        def write(commit: SourceCommit) -> None:
            failpoints.hit(failpoints.COMMIT_BEFORE, replica=name)
            self._write_commit(name, store, commit, outcome)
            failpoints.hit(failpoints.COMMIT_AFTER, replica=name)

        writes = {self._files.submit(write, commit): commit.version for commit in ready}
        written = []
        for future in as_completed(writes):
            try:
                future.result()
                written.append(writes[future])
            except Exception as err:  # noqa: BLE001 - the others still settle first
                error = error or unexpected(err, f"table {self.table.name} writing version {writes[future]}")
        # Log files of a version only once its commit exists (checkpoints also need the commit).
        self._copy_log_files(store, source, [f"{v:020d}.crc" for v in sorted(written) if v in crcs], outcome)
        for v in sorted(written):
            if v in checkpoints:
                self._copy_checkpoint(store, source, checkpoints[v], outcome)
        if error is not None:
            raise error
        return max(written, default=head)

    def _backfill(self, name: str, store: TableStore, source: SourceLog, head: int,
                  outcome: ReplicaOutcome) -> MissingHistory | None:
        """One step of backfilling history below the replica's readable run: ascending, batch
        by batch, up to BACKFILL_STEP_VERSIONS versions (holes an interrupted step left included).

        Returns what is still missing afterwards (None when the history is complete).
        """
        budget, previous = BACKFILL_STEP_VERSIONS, None
        while (missing := missing_history(store, source, head)) is not None and budget > 0:
            if previous is not None and missing.low <= previous:
                return missing  # no progress (cannot happen without an error); the next step retries
            previous = low = missing.low
            high = min(missing.high, low + budget - 1)
            bottom = primary_bottom(source)
            try:
                if bottom is not None and low == bottom[0] and bottom[1] is not None:
                    # The primary's log starts at a checkpoint (older versions cleaned up): start there.
                    self._seed(name, store, source, low, bottom[1], outcome)
                    outcome.backfilled += 1
                    low += 1
                if low <= high:
                    entries = source.entries_for(low, high)
                    written = self._write_versions(name, store, source, low, high, entries, outcome, in_order=False)
                    outcome.backfilled += written - low + 1
            except DataFileMissing as err:
                # The primary vacuumed files these old versions need: they cannot be read on the
                # primary either. The replica is current at its head, so this is no replica error;
                # the history stays reported as missing and the next catch-up tries again.
                log.warning("history.backfill_blocked table=%s replica=%s versions=%d..%d error=%s", self.table.name,
                            name, missing.low, high, err, extra={"table": self.table.name, "replica": name})
                return missing_history(store, source, head)
            log.info("history.backfilled table=%s replica=%s versions=%d..%d", self.table.name, name, missing.low,
                     high, extra={"table": self.table.name, "replica": name})
            budget -= high - missing.low + 1
        return missing

    def _start_batch(self, store: TableStore, source: SourceLog, first: int, target: int, *,
                     probe: bool = False, known: set | None = None) -> _Batch:
        """Read the commits from `first` (at most BATCH_VERSIONS, about BATCH_COMMIT_BYTES) in
        parallel, then start copying their files."""
        versions = list(range(first, min(first + BATCH_VERSIONS, target + 1)))
        batch = _Batch()
        held = 0
        # Reads in flight: 4 hide latency and stop near the byte limit whatever the commits'
        # sizes; 16 when the listing says the whole batch fits under the limit anyway.
        sizes = [source.sizes.get(commit_name(v)) for v in versions]
        window = 16 if None not in sizes and sum(sizes) <= BATCH_COMMIT_BYTES else 4
        pending = [(v, self._files.submit(source.commit, v)) for v in versions[:window]]
        position = len(pending)
        try:
            while pending:
                v, future = pending.pop(0)
                try:
                    commit = future.result()
                except Exception as err:  # noqa: BLE001 - versions before it are still written
                    batch.error = unexpected(err, f"table {self.table.name} reading version {v}")
                    break
                batch.commits.append(commit)
                held += len(commit.data)
                if held >= BATCH_COMMIT_BYTES:
                    break
                if position < len(versions):
                    pending.append((versions[position], self._files.submit(source.commit, versions[position])))
                    position += 1
        finally:
            for _, future in pending:
                future.cancel() or future.exception()
        unique = {f.path: f for commit in batch.commits for f in commit.files}
        if known:
            present = [path for path in unique if path in known]
            for path in present:
                del unique[path]
            batch.known_present = len(present)
        batch.copies = {
            self._files.submit(store.copy_file_from, source.store, f.path, expected_size=f.size, bulk=True,
                               probe=probe): f.path
            for f in unique.values()
        }
        return batch

    def _finish_copies(self, copies: dict, outcome: ReplicaOutcome, *, failpoint: str = failpoints.FILE_COPIED,
                       log_files: bool = False) -> dict[str, ReplicationError]:
        failed: dict[str, ReplicationError] = {}
        for future in as_completed(copies):
            path = copies[future]
            try:
                copied = future.result()
            except Exception as err:  # noqa: BLE001 - reported per file, then per replica
                failed[path] = unexpected(err, f"table {self.table.name} copying {path}")
                if not isinstance(err, ReplicationError):
                    log.warning("file.copy_failed table=%s path=%s error=%s", self.table.name, path,
                                type(err).__name__, exc_info=err)
                continue
            failpoints.hit(failpoint, replica=outcome.replica, path=path)
            if not copied and not log_files:
                outcome.files_present += 1
            if copied and log_files:
                outcome.log_bytes += copied
            elif copied:
                outcome.files += 1
                outcome.bytes += copied
                if outcome.progress is not None:
                    outcome.progress(outcome.replica, 1, copied)
                log.debug("file.copied table=%s path=%s bytes=%d", self.table.name, path, copied)
        return failed

    @staticmethod
    def _abandon(batch) -> None:
        """Cancel or wait for a started batch's copies, so no copy outlives the invocation."""
        if isinstance(batch, _Ahead):
            try:
                batch = batch.result()
            except Exception:  # noqa: BLE001 - the error that ended the loop is the one reported
                return
        if batch is not None:
            for future in batch.copies:
                if not future.cancel():
                    future.exception()

    def _locate_head(self, store: TableStore, target: int, *,
                     expect_next: bool = False) -> tuple[int | None, list[LogEntry]]:
        """Two HEAD requests (in parallel) answer the common cases; otherwise search listings.

        `expect_next` (an event for a new commit): one HEAD, of target-1. When it is there the
        replica is taken to be at target-1; if it already holds target (a duplicate event), the
        conditional commit write finds it and compares it, as the second HEAD would have.
        """
        if target == 0:
            return find_head(store, target)
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
        data = source.commit_bytes(version)
        if mine.size == len(data) and mine.content_md5 == hashlib.md5(data).digest():  # noqa: S324 - content check
            return
        if mine.size != len(data) or store.get_log_file(commit_name(version)) != data:
            raise ReplicaDiverged(
                f"replica {name} of table {self.table.name} has version {version} with different content "
                "from the primary's; the replica has diverged. Inspect both commits and restore the "
                "replica from a snapshot. It will not be overwritten."
            )

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
        same = mine.size == theirs.size
        if same and not (mine.content_md5 and theirs.content_md5 and mine.content_md5 == theirs.content_md5):
            same = store.get_log_file(mine.name) == source.commit_bytes(head)
        if not same:
            raise ReplicaDiverged(
                f"replica {name} of table {self.table.name} has version {head} with different content "
                "from the primary's; the replica has diverged. Inspect both commits and restore the "
                "replica from a snapshot. It will not be overwritten."
            )

    def _seed(self, name: str, store: TableStore, source: SourceLog, version: int,
              names: list[str], outcome: ReplicaOutcome) -> int:
        """Make the replica a table at `version` from the primary's checkpoint there.

        The checkpoint is streamed a batch of files at a time (its files copied before the
        next batch is read), so memory does not grow with the table's size.
        """
        started = time.monotonic()
        nfiles = 0
        for files in source.iter_checkpoint_files(names):
            failed = self._copy_files(store, source, files, outcome, failpoint=failpoints.SEED_FILE, bulk=True)
            if failed:
                raise next(iter(failed.values()))
            nfiles += len(files)
            outcome.remember_seeded(f.path for f in files)
        self._copy_checkpoint(store, source, names, outcome)
        try:
            commit = source.commit(version)
        except CommitNotFound:
            commit = None  # the checkpoint alone defines the version
        if commit is not None:
            self._write_commit(name, store, commit, outcome)
        log.info("replica.seeded table=%s replica=%s version=%d files=%d seconds=%.2f",
                 self.table.name, name, version, nfiles, time.monotonic() - started,
                 extra={"table": self.table.name, "replica": name, "version": version})
        return version

    # -- steps ------------------------------------------------------------------------
    def _copy_files(self, store: TableStore, source: SourceLog, files: list[ReferencedFile],
                    outcome: ReplicaOutcome, *, failpoint: str = failpoints.FILE_COPIED,
                    log_files: bool = False, bulk: bool = False) -> dict[str, ReplicationError]:
        """Copy files in parallel; returns path -> error for the ones that failed."""
        unique = {f.path: f for f in files}
        copies = {
            self._files.submit(store.copy_file_from, source.store, f.path, expected_size=f.size, bulk=bulk): f.path
            for f in unique.values()
        }
        return self._finish_copies(copies, outcome, failpoint=failpoint, log_files=log_files)

    def _copy_log_files(self, store: TableStore, source: SourceLog, names: list[str], outcome: ReplicaOutcome) -> None:
        """Copy checkpoint, sidecar and `.crc` files, each appearing only complete (never a pending copy)."""
        copies = {self._files.submit(store.copy_log_file_from, source.store, n, expected_size=source.sizes.get(n)):
                  f"_delta_log/{n}" for n in names}
        failed = self._finish_copies(copies, outcome, log_files=True)
        if failed:
            raise next(iter(failed.values()))

    def _copy_crc(self, store: TableStore, source: SourceLog, version: int, outcome: ReplicaOutcome) -> None:
        """A `.crc` event for a version the replica already has: copy the file if the primary has it."""
        name = f"{version:020d}.crc"
        if source.store.log_entry(name) is not None:
            self._copy_log_files(store, source, [name], outcome)

    def _write_commit(self, name: str, store: TableStore, commit: SourceCommit, outcome: ReplicaOutcome) -> bool:
        """Create the commit with the primary's exact bytes, only if absent; never overwrite.
        Returns whether it was created (False: it was there already, identical)."""
        version, data = commit.version, commit.data
        started = time.monotonic()
        if not store.create_log_file(commit_name(version), data):
            existing = store.get_log_file(commit_name(version))
            if existing != data:
                raise ReplicaDiverged(
                    f"replica {name} of table {self.table.name} already has version {version} with "
                    "different content; the replica has diverged. Inspect both commits and restore "
                    "the replica from a snapshot. It will not be overwritten."
                )
            return False
        if is_vacuum_end(commit):
            outcome.vacuum_versions.append(version)
        log.info("commit.replicated table=%s replica=%s version=%d files=%d seconds=%.3f",
                 self.table.name, name, version, len(commit.files), time.monotonic() - started,
                 extra={"table": self.table.name, "replica": name, "version": version, "files": len(commit.files)})
        return True

    def _copy_checkpoint(self, store: TableStore, source: SourceLog, names: list[str], outcome: ReplicaOutcome) -> None:
        """Sidecars first, then the checkpoint parts: a reader never finds a part without its data."""
        failpoints.hit(failpoints.CHECKPOINT_COPYING, replica=outcome.replica)
        sidecars = [s for n in names if parse_log_name(n).kind == LogFileKind.CHECKPOINT_V2
                    for s in source.checkpoint_sidecars(n)]
        if sidecars:
            self._copy_log_files(store, source, sidecars, outcome)
        self._copy_log_files(store, source, names, outcome)
        outcome.checkpoints += 1

    def _sync_checkpoint(self, name: str, store: TableStore, source: SourceLog, head: int | None,
                         outcome: ReplicaOutcome) -> None:
        """Copy the primary's latest checkpoint and `_last_checkpoint` once the replica has its version."""
        if head is None:
            return
        hint = source.last_checkpoint()
        if hint is None or hint[0] > head:
            return
        version, data = hint
        current = store.get_last_checkpoint()
        if current is not None:
            try:
                if int(json.loads(current.data)["version"]) >= version:
                    return
            except (ValueError, KeyError, TypeError):
                pass  # unreadable: replace it, the primary's is authoritative
        found = complete_checkpoints(source.listing(version_prefix(version)))
        if version not in found:
            return
        self._copy_checkpoint(store, source, found[version], outcome)
        failpoints.hit(failpoints.CHECKPOINT_COPIED, replica=name)
        if store.put_last_checkpoint(data, replace_etag=current.etag if current else None):
            log.info("checkpoint.replicated table=%s replica=%s version=%d", self.table.name, name, version,
                     extra={"table": self.table.name, "replica": name, "version": version})
