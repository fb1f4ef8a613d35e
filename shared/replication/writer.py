"""One replica's copies and writes for one invocation: copy files (data, checkpoints, `.crc`),
create a commit with the primary's exact bytes, seed from a checkpoint, move `_last_checkpoint`.

Each step keeps its own rule: a commit is created only if absent and never overwritten, log
files appear only complete, checkpoints arrive sidecars first and `_last_checkpoint` last. The
order of steps (what waits for what) is decided by catch_up.py and replicator.py, which hold a
`ReplicaWriter` rather than inherit its steps: what one replica's invocation works on (store,
source, outcome) is its state, so no step takes them as arguments or flags.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Callable

from shared import failpoints
from shared.config.model import TableConfig
from shared.delta.compare import diverged
from shared.delta.log import LogFileKind, ReferencedFile, commit_name, crc_name, parse_log_name, version_prefix
from shared.delta.commit_digests import CommitDigests
from shared.delta.source_log import SourceCommit, SourceLog, complete_checkpoints
from shared.errors import CommitNotFound, ReplicationError
from shared.replication.fence import WriteFence
from shared.replication.outcome import ReplicaOutcome, is_vacuum_end, unexpected
from shared.storage.table_store import TableStore

log = logging.getLogger("shared.replication.replicator")  # the replicator's lines, one name (as before)


class ReplicaLog(logging.LoggerAdapter):
    """The replication logger with `table` and `replica` in every record's extra fields (merged
    with the call's own, which Python 3.11's LoggerAdapter would replace)."""

    def process(self, msg, kwargs):
        kwargs["extra"] = {**self.extra, **(kwargs.get("extra") or {})}
        return msg, kwargs


class ReplicaWriter:
    """The steps of one replica's invocation.

    Args:
        table: the table's configuration.
        name: the replica's name.
        store: the replica's store.
        source: this invocation's view of the primary's log.
        outcome: what the invocation did so far (counts, lease, seeded paths), updated in place.
        files: the shared, bounded pool for file copies and commit reads.
        fence: reads the topology before every commit and `_last_checkpoint` write; None outside a runtime.
    """

    def __init__(self, table: TableConfig, name: str, store: TableStore, source: SourceLog, outcome: ReplicaOutcome,
                 files: ThreadPoolExecutor, fence: WriteFence | None, *, written: CommitDigests | None = None) -> None:
        self.table = table
        self.name = name
        self.store = store
        self.source = source
        self.outcome = outcome
        self.files = files
        self.fence = fence
        self.written = written  # the commits this process wrote to this replica (replicator.py), or None
        self.log = ReplicaLog(log, {"table": table.name, "replica": name})

    # -- copies -----------------------------------------------------------------------
    def finish_copies(self, copies: dict, *, failpoint: str = failpoints.FILE_COPIED,
                      tally: Callable[[str, int], None] | None = None) -> dict[str, ReplicationError]:
        """Wait for every copy (future -> path); returns path -> error for the ones that failed.
        Each finished copy is counted by `tally(path, bytes copied)` (default: a data file)."""
        tally = tally or self._tally_data_file
        failed: dict[str, ReplicationError] = {}
        # All done already (a copy made in this thread): no waiter to install.
        for future in copies if all(f.done() for f in copies) else as_completed(copies):
            path = copies[future]
            try:
                copied = future.result()
            except Exception as err:  # noqa: BLE001 - reported per file, then per replica
                failed[path] = unexpected(err, f"table {self.table.name} copying {path}")
                if not isinstance(err, ReplicationError):
                    self.log.warning("file.copy_failed table=%s path=%s error=%s", self.table.name, path,
                                     type(err).__name__, exc_info=err)
                continue
            failpoints.hit(failpoint, replica=self.name, path=path)
            tally(path, copied)
        return failed

    def _tally_data_file(self, path: str, copied: int) -> None:
        outcome = self.outcome
        if not copied:
            outcome.files_present += 1  # there already (a duplicate event, a seed's file)
            return
        outcome.files += 1
        outcome.bytes += copied
        if outcome.progress is not None:
            outcome.progress(self.name, 1, copied)
        self.log.debug("file.copied table=%s path=%s bytes=%d", self.table.name, path, copied)

    def _tally_log_file(self, path: str, copied: int) -> None:
        self.outcome.log_bytes += copied

    def copy_files(self, files: list[ReferencedFile], *, failpoint: str = failpoints.FILE_COPIED,
                   bulk: bool = False) -> dict[str, ReplicationError]:
        """Copy data files in parallel; returns path -> error for the ones that failed."""
        unique = {f.path: f for f in files}
        if len(unique) == 1:  # one file (most commits): copied in this thread, a thread hop less
            (f,) = unique.values()
            done: Future = Future()
            try:
                done.set_result(self.store.copy_file_from(self.source.store, f.path, expected_size=f.size, bulk=bulk))
            except Exception as err:  # noqa: BLE001 - reported by finish_copies, as a pool's copy would be
                done.set_exception(err)
            return self.finish_copies({done: f.path}, failpoint=failpoint)
        copies = {self.files.submit(self.store.copy_file_from, self.source.store, f.path, expected_size=f.size,
                                    bulk=bulk): f.path
                  for f in unique.values()}
        return self.finish_copies(copies, failpoint=failpoint)

    def copy_log_files(self, names: list[str]) -> None:
        """Copy checkpoint, sidecar and `.crc` files, each appearing only complete (never a pending copy)."""
        copies = {self.files.submit(self.store.copy_log_file_from, self.source.store, n,
                                    expected_size=self.source.sizes.get(n)): f"_delta_log/{n}" for n in names}
        failed = self.finish_copies(copies, tally=self._tally_log_file)
        if failed:
            raise next(iter(failed.values()))

    def copy_crc(self, version: int) -> None:
        """A `.crc` event for a version the replica already has: copy the file if the primary has it."""
        name = crc_name(version)
        if self.source.store.log_entry(name) is not None:
            self.copy_log_files([name])

    # -- writes -----------------------------------------------------------------------
    def _check_fence(self, what: str) -> None:
        """Read the topology now: the write that follows goes ahead only under the same primary and epoch."""
        if self.fence is not None:
            self.fence.check(self.source.epoch, replica=self.name, what=what)

    def write_commit(self, commit: SourceCommit) -> bool:
        """Create the commit with the primary's exact bytes, only if absent and only while the topology
        still names this primary (read just before); never overwrite.
        Returns whether it was created (False: it was there already, identical)."""
        version, data = commit.version, commit.data
        started = time.monotonic()
        if self.outcome.lease is not None:
            self.outcome.lease.check()
        self._check_fence(f"commit {version}")
        if not self.store.create_log_file(commit_name(version), data):
            if self.store.get_log_file(commit_name(version)) != data:
                raise diverged(self.name, self.table.name, version)
            self._wrote(commit)
            return False
        self._wrote(commit)
        if is_vacuum_end(commit):
            self.outcome.vacuum_versions.append(version)
        self.log.info("commit.replicated table=%s replica=%s version=%d files=%d seconds=%.3f",
                      self.table.name, self.name, version, len(commit.files), time.monotonic() - started,
                      extra={"version": version, "files": len(commit.files)})
        return True

    def _wrote(self, commit: SourceCommit) -> None:
        """The replica holds the primary's commit (created now, or found identical)."""
        if self.written is not None and self.source.epoch is not None:
            self.written.put(self.source.epoch, commit.version, commit.digest)

    def copy_checkpoint(self, names: list[str]) -> None:
        """Sidecars first, then the checkpoint parts: a reader never finds a part without its data."""
        failpoints.hit(failpoints.CHECKPOINT_COPYING, replica=self.name)
        self.source.check_checkpoint(names)  # every path it names, before any of its files is written
        sidecars = [s for n in names if parse_log_name(n).kind == LogFileKind.CHECKPOINT_V2
                    for s in self.source.checkpoint_sidecars(n)]
        if sidecars:
            self.copy_log_files(sidecars)
        self.copy_log_files(names)
        self.outcome.checkpoints += 1

    def sync_checkpoint(self, head: int | None) -> None:
        """Copy the primary's latest checkpoint and `_last_checkpoint` once the replica has its version."""
        if head is None:
            return
        hint = self.source.last_checkpoint()
        if hint is None or hint[0] > head:
            return
        version, data = hint
        current = self.store.get_last_checkpoint()
        if current is not None:
            try:
                if int(json.loads(current.data)["version"]) >= version:
                    return
            except (ValueError, KeyError, TypeError):
                pass  # unreadable: replace it, the primary's is authoritative
        found = complete_checkpoints(self.source.listing(version_prefix(version)))
        if version not in found:
            return
        self.copy_checkpoint(found[version])
        failpoints.hit(failpoints.CHECKPOINT_COPIED, replica=self.name)
        self._check_fence(f"_last_checkpoint (version {version})")
        if self.store.put_last_checkpoint(data, replace_etag=current.etag if current else None):
            self.log.info("checkpoint.replicated table=%s replica=%s version=%d", self.table.name, self.name,
                          version, extra={"version": version})

    def seed(self, version: int, names: list[str]) -> int:
        """Make the replica a table at `version` from the primary's checkpoint there.

        The checkpoint is streamed a batch of files at a time (its files copied before the
        next batch is read), so memory does not grow with the table's size.
        """
        started = time.monotonic()
        nfiles = 0
        for files in self.source.iter_checkpoint_files(names):
            failed = self.copy_files(files, failpoint=failpoints.SEED_FILE, bulk=True)
            if failed:
                raise next(iter(failed.values()))
            nfiles += len(files)
            self.outcome.remember_seeded(f.path for f in files)
        self.copy_checkpoint(names)
        try:
            commit = self.source.commit(version)
        except CommitNotFound:
            commit = None  # the checkpoint alone defines the version
        if commit is not None:
            self.write_commit(commit)
        self.log.info("replica.seeded table=%s replica=%s version=%d files=%d seconds=%.2f",
                      self.table.name, self.name, version, nfiles, time.monotonic() - started,
                      extra={"version": version})
        return version
