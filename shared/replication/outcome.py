"""What happened to one replica in one invocation: its state, positions, counts and error."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

from shared.delta.source_log import SourceCommit
from shared.errors import ReplicationError, UnexpectedFailure
from shared.replication.history import MissingHistory

# Paths a seed remembers for the backfill that follows it (about 6 MiB of names at most).
SEEDED_PATHS_LIMIT = 50_000

# Written by delta-rs and Spark as the last commit of a VACUUM: the files are gone now.
VACUUM_END = "VACUUM END"


class ReplicaState(enum.Enum):
    UP_TO_DATE = "up_to_date"
    REPLICATED = "replicated"
    DIVERGED = "diverged"
    ERROR = "error"


@dataclass
class ReplicaOutcome:
    """What happened to one replica in one invocation."""

    replica: str
    state: ReplicaState
    head_before: int | None = None
    head_after: int | None = None
    files: int = 0
    bytes: int = 0
    files_present: int = 0  # files to copy that the replica already had (nothing sent)
    seconds: float = 0.0
    checkpoints: int = 0
    log_bytes: int = 0  # checkpoints, sidecars and .crc copied (data bytes are in `bytes`)
    progress: object = field(default=None, repr=False)  # callable(replica, files, bytes) or None
    error: ReplicationError | None = field(default=None, repr=False)
    vacuum_versions: list = field(default_factory=list)  # VACUUM END commits written to this replica
    history: MissingHistory | None = None  # history still to backfill after this invocation (catch-up only)
    seeded: int | None = None  # the checkpoint version an empty replica was made readable at
    backfilled: int = 0  # versions below the replica's readable run written by this invocation
    readable_seconds: float | None = None  # for a seeded replica: time until it was readable at its head
    # (bytes, log_bytes, files) already added to the transfer record by the replicator itself;
    # the caller records only what came after.
    transfer_recorded: tuple = (0, 0, 0)

    # Files this invocation's seed copied (at most SEEDED_PATHS_LIMIT, else None): its backfill
    # skips them instead of asking. Dropped when the invocation ends.
    seeded_paths: set | None = field(default_factory=set, repr=False, compare=False)
    # The replica's lease while a catch-up holds it (storage.lease.HeldLease): checked before
    # every commit write, so a holder that could not renew stops before its next write.
    lease: object = field(default=None, repr=False, compare=False)

    def remember_seeded(self, paths) -> None:
        if self.seeded_paths is None:
            return
        self.seeded_paths.update(paths)
        if len(self.seeded_paths) > SEEDED_PATHS_LIMIT:
            self.seeded_paths = None  # a huge table: the backfill asks (HEAD) instead

    @property
    def retryable(self) -> bool:
        return self.error is not None and self.error.retryable


def unexpected(err: BaseException, what: str) -> ReplicationError:
    """Our errors pass through; anything else becomes a retryable UnexpectedFailure with the cause chained."""
    if isinstance(err, ReplicationError):
        return err
    wrapped = UnexpectedFailure(f"{what}: unexpected {type(err).__name__}: {err}; it will be retried.")
    wrapped.__cause__ = err
    return wrapped


def is_vacuum_end(commit: SourceCommit) -> bool:
    """Whether a commit is the end of a VACUUM (its commitInfo operation is "VACUUM END")."""
    if VACUUM_END.encode() not in commit.data:
        return False  # the cheap test first: most commits are not
    for line in commit.data.splitlines():
        if b'"commitInfo"' in line:
            try:
                info = json.loads(line).get("commitInfo")
            except ValueError:
                return False
            return isinstance(info, dict) and info.get("operation") == VACUUM_END
    return False
