"""The steps replication is made of, for one replica: copy files (data, checkpoints, `.crc`),
create a commit with the primary's exact bytes, seed from a checkpoint, move `_last_checkpoint`.

Each step keeps its own rule: a commit is created only if absent and never overwritten, log
files appear only complete, checkpoints arrive sidecars first and `_last_checkpoint` last. The
order of steps (what waits for what) is decided by catch_up.py and replicator.py.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from shared import failpoints
from shared.config.model import TableConfig
from shared.delta.compare import diverged
from shared.delta.log import (
    LogFileKind,
    ReferencedFile,
    commit_name,
    crc_name,
    parse_log_name,
    version_prefix,
)
from shared.delta.source_log import SourceCommit, SourceLog, complete_checkpoints
from shared.errors import CommitNotFound, ReplicationError
from shared.replication.fence import WriteFence
from shared.replication.outcome import ReplicaOutcome, is_vacuum_end, unexpected
from shared.storage.table_store import TableStore

log = logging.getLogger("shared.replication.replicator")  # one logger name for the replicator's lines


class ReplicaSteps:
    """Copy and write steps shared by the event path, catch-up, seeding and backfill."""

    table: TableConfig
    _files: ThreadPoolExecutor
    fence: WriteFence | None = None

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
            self._write_commit(name, store, source, commit, outcome)
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
        name = crc_name(version)
        if source.store.log_entry(name) is not None:
            self._copy_log_files(store, source, [name], outcome)

    def _check_fence(self, name: str, source: SourceLog, what: str) -> None:
        """Read the topology now: the write that follows goes ahead only under the same primary and epoch."""
        if self.fence is not None:
            self.fence.check(source.epoch, replica=name, what=what)

    def _write_commit(self, name: str, store: TableStore, source: SourceLog, commit: SourceCommit,
                      outcome: ReplicaOutcome) -> bool:
        """Create the commit with the primary's exact bytes, only if absent and only while the topology
        still names this primary (read just before); never overwrite.
        Returns whether it was created (False: it was there already, identical)."""
        version, data = commit.version, commit.data
        started = time.monotonic()
        if outcome.lease is not None:
            outcome.lease.check()
        self._check_fence(name, source, f"commit {version}")
        if not store.create_log_file(commit_name(version), data):
            if store.get_log_file(commit_name(version)) != data:
                raise diverged(name, self.table.name, version)
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
        source.check_checkpoint(names)  # every path it names, before any of its files is written
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
        self._check_fence(name, source, f"_last_checkpoint (version {version})")
        if store.put_last_checkpoint(data, replace_etag=current.etag if current else None):
            log.info("checkpoint.replicated table=%s replica=%s version=%d", self.table.name, name, version,
                     extra={"table": self.table.name, "replica": name, "version": version})
