"""Catching a replica up over many versions: batches of commits read ahead and their files
copied while the previous batch's commits are written, seeding from a checkpoint when the log
cannot supply the versions, and backfilling history below a readable run.

Memory per catching-up replica is at most two batches (this one and the one read ahead),
whatever the lag. At the head commits are written in order; below a readable run (history)
a batch's commits are written at once, since a reader of a version whose chain has a hole
gets an error, never other rows. The two orders are two batch writers handed to one pipeline.
"""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import as_completed
from dataclasses import dataclass, field

from shared import failpoints
from shared.config.tuning import Tuning
from shared.delta.log import LogFileKind, commit_name, crc_name, parse_log_name
from shared.delta.source_log import SourceCommit, SourceLog, complete_checkpoints
from shared.errors import CommitNotFound, DataFileMissing, ReplicationError
from shared.replication.history import MissingHistory, missing_history, primary_bottom
from shared.replication.outcome import unexpected
from shared.replication.writer import ReplicaWriter
from shared.storage.table_store import LogEntry, TableStore



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
        # In the caller's context: the invocation's deadline (shared/deadline.py) reaches its requests.
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run, fn, args, kwargs),
                                        name="batch-ahead", daemon=True)
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


class CatchUp:
    """Many versions for one replica: catch-up, seeding, backfill, through its writer.

    A batch is `tuning.batch_versions` versions whose files are copied together before their
    commits are written; it also ends once its commits hold `tuning.batch_commit_bytes` (it
    always takes at least one commit), so memory per catching-up replica is at most two batches
    (this one and the read-ahead), whatever the lag. A backfill step (the lag check's timer or
    the CLI) writes at most `tuning.backfill_step_versions`; the next resumes where it stopped,
    found by listing the replica.

    Args:
        writer: the replica's writer for this invocation (store, source, outcome, pools).
        tuning: the batch sizes.
    """

    def __init__(self, writer: ReplicaWriter, tuning: Tuning) -> None:
        self.w = writer
        self.tuning = tuning
        self.table = writer.table
        self.source = writer.source
        self.outcome = writer.outcome

    def run(self, head: int | None, target: int) -> int:
        """Copy versions head+1..target; seed from a checkpoint when the log cannot supply them."""
        w, source = self.w, self.source
        start = 0 if head is None else head + 1
        # Listing from the head itself shares one request with the divergence check.
        entries = source.entries_for(start if head is None else head, target)
        present = {lf.version for e in entries if (lf := parse_log_name(e.name)) and lf.kind == LogFileKind.COMMIT}
        if target not in present and target not in complete_checkpoints(entries):
            raise CommitNotFound(
                f"table {self.table.name}: version {target} has no commit on the primary "
                f"({source.store.description}); it was never written, or was deleted."
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
                    f"table {self.table.name}: replica {w.name} needs version {start}, which the primary "
                    f"no longer has, and the primary has no checkpoint at or after it; re-create the replica."
                )
            head = w.seed(found[0], found[1])
            self.outcome.seeded = head
            if head >= target:
                return head
            start = head + 1
            entries = source.entries_for(start, target)
        return self._pipeline(start, target, entries, self._write_in_order, known=None)

    def _pipeline(self, start: int, target: int, entries: list[LogEntry], write_batch, *,
                  known: set | None) -> int:
        """Write versions start..target (version start-1 is on the replica), each commit after
        its files, with the `.crc` and checkpoint files of each version after its commit, a batch
        at a time by `write_batch` (in order at the head, at once below a readable run). Files in
        `known` are on the replica already (this invocation's seed copied them): not requested.
        Returns the last version written."""
        head = start - 1
        checkpoints = complete_checkpoints(entries)
        crcs = {lf.version for e in entries if (lf := parse_log_name(e.name)) and lf.kind == LogFileKind.CRC}
        # Pipelined: the next batch's commits are read and its files copied while this batch's
        # commits are written. Files landing early are harmless: nothing references them until
        # their own commit exists.
        # Whether to ask before copying: when most of the last finished batch's files were on
        # the replica already (history whose files a seed copied), a HEAD beats a failed copy.
        probe = False
        outcome = self.outcome
        upcoming = self._start_batch(start, target, known=known)
        try:
            while upcoming is not None:
                current, upcoming = upcoming, None
                if isinstance(current, _Ahead):
                    current = current.result()
                following = current.commits[-1].version + 1 if current.commits else None
                if following is not None and following <= target and current.error is None:
                    # Read on a thread of its own while this batch is finished and written.
                    upcoming = _Ahead(self._start_batch, following, target, probe=probe, known=known)
                outcome.files_present += current.known_present
                present = outcome.files_present
                failed = self.w.finish_copies(current.copies)
                probe = 2 * (outcome.files_present - present) > len(current.copies)
                head = write_batch(current, failed, crcs, checkpoints, head)
                current.commits.clear()  # this batch's commit bytes are no longer needed
                if current.error is not None:
                    raise current.error
        finally:
            self._abandon(upcoming)  # no copy outlives the invocation that started it
        return head

    def _log_files_of(self, version: int, crcs: set[int], checkpoints: dict[int, list[str]]) -> None:
        """A version's `.crc` and checkpoint files, once its commit exists (checkpoints need it)."""
        if version in crcs:
            self.w.copy_log_files([crc_name(version)])
        if version in checkpoints:
            self.w.copy_checkpoint(checkpoints[version])

    def _write_in_order(self, batch: _Batch, failed: dict, crcs: set[int], checkpoints: dict[int, list[str]],
                        head: int) -> int:
        """At the head: each commit after the previous one, stopping at the first with a failed file."""
        for commit in batch.commits:
            missing = next((f.path for f in commit.files if f.path in failed), None)
            if missing is not None:
                raise failed[missing]
            failpoints.hit(failpoints.COMMIT_BEFORE, replica=self.w.name, version=commit.version)
            self.w.write_commit(commit)
            failpoints.hit(failpoints.COMMIT_AFTER, replica=self.w.name)
            head = commit.version
            self._log_files_of(head, crcs, checkpoints)
        return head

    def _write_at_once(self, batch: _Batch, failed: dict, crcs: set[int], checkpoints: dict[int, list[str]],
                       head: int) -> int:
        """Below a readable run: a batch's commits concurrently (those before the first with a
        failed file), then their `.crc` and checkpoint files; the first error raised after all
        writes settled. A reader of a version whose chain still has a hole gets an error
        (delta-rs: "Expected contiguous commit files"; Spark: versions not contiguous), never
        other rows."""
        ready, error = [], None
        for commit in batch.commits:
            missing = next((f.path for f in commit.files if f.path in failed), None)
            if missing is not None:
                error = failed[missing]
                break
            ready.append(commit)

        def write(commit: SourceCommit) -> None:
            failpoints.hit(failpoints.COMMIT_BEFORE, replica=self.w.name, version=commit.version)
            self.w.write_commit(commit)
            failpoints.hit(failpoints.COMMIT_AFTER, replica=self.w.name)

        writes = {self.w.files.submit(write, commit): commit.version for commit in ready}
        written = []
        for future in as_completed(writes):
            try:
                future.result()
                written.append(writes[future])
            except Exception as err:  # noqa: BLE001 - the others still settle first
                error = error or unexpected(err, f"table {self.table.name} writing version {writes[future]}")
        self.w.copy_log_files([crc_name(v) for v in sorted(written) if v in crcs])
        for v in sorted(written):
            if v in checkpoints:
                self.w.copy_checkpoint(checkpoints[v])
        if error is not None:
            raise error
        return max(written, default=head)

    def backfill(self, head: int) -> MissingHistory | None:
        """One step of backfilling history below the replica's readable run: ascending, batch
        by batch, up to `tuning.backfill_step_versions` versions (holes an interrupted step left included).

        Returns what is still missing afterwards (None when the history is complete).
        """
        w, source, store = self.w, self.source, self.w.store
        budget, previous = self.tuning.backfill_step_versions, None
        while (missing := missing_history(store, source, head)) is not None and budget > 0:
            if previous is not None and missing.low <= previous:
                return missing  # no progress (cannot happen without an error); the next step retries
            previous = low = missing.low
            high = min(missing.high, low + budget - 1)
            bottom = primary_bottom(source)
            try:
                if bottom is not None and low == bottom[0] and bottom[1] is not None:
                    # The primary's log starts at a checkpoint (older versions cleaned up): start there.
                    w.seed(low, bottom[1])
                    self.outcome.backfilled += 1
                    low += 1
                if low <= high:
                    entries = source.entries_for(low, high)
                    # Below a readable run, files this invocation's seed copied are there: no request for them.
                    written = self._pipeline(low, high, entries, self._write_at_once, known=self.outcome.seeded_paths)
                    self.outcome.backfilled += written - low + 1
            except DataFileMissing as err:
                # The primary vacuumed files these old versions need: they cannot be read on the
                # primary either. The replica is current at its head, so this is no replica error;
                # the history stays reported as missing and the next catch-up tries again.
                w.log.warning("history.backfill_blocked table=%s replica=%s versions=%d..%d error=%s",
                              self.table.name, w.name, missing.low, high, err)
                return missing_history(store, source, head)
            w.log.info("history.backfilled table=%s replica=%s versions=%d..%d", self.table.name, w.name,
                       missing.low, high)
            budget -= high - missing.low + 1
        return missing

    def _start_batch(self, first: int, target: int, *, probe: bool = False, known: set | None = None) -> _Batch:
        """Read the commits from `first` (at most a batch of versions, about its bytes) in parallel,
        then start copying their files."""
        source, files = self.source, self.w.files
        limit = self.tuning.batch_commit_bytes
        versions = list(range(first, min(first + self.tuning.batch_versions, target + 1)))
        batch = _Batch()
        held = 0
        # Reads in flight: 4 hide latency and stop near the byte limit whatever the commits'
        # sizes; 16 when the listing says the whole batch fits under the limit anyway.
        sizes = [source.sizes.get(commit_name(v)) for v in versions]
        window = 16 if None not in sizes and sum(sizes) <= limit else 4
        pending = [(v, files.submit(source.commit, v)) for v in versions[:window]]
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
                if held >= limit:
                    break
                if position < len(versions):
                    pending.append((versions[position], files.submit(source.commit, versions[position])))
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
        batch.copies = {files.submit(_copy_file, self.w.store, source, f, probe): f.path for f in unique.values()}
        return batch

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


def _copy_file(store: TableStore, source: SourceLog, f, probe: bool) -> int:
    # The failpoint lets a test hold one copy and see that no commit waits for less.
    failpoints.hit(failpoints.FILE_COPYING, location=store.location_key, path=f.path)
    return store.copy_file_from(source.store, f.path, expected_size=f.size, bulk=True, probe=probe)
