"""The exception hierarchy. Every error says what happened, to what, and what to do."""


class ReplicationError(Exception):
    """Raised when replication cannot do its job; the base of every error here."""

    retryable = False


class ConfigError(ReplicationError, ValueError):
    """Raised when the replication configuration or a connection setting is invalid."""


class InvalidEvent(ReplicationError, ValueError):
    """Raised when an Event Grid event is malformed or names something we must not touch."""


class CommitNotFound(ReplicationError):
    """Raised when a version has no commit on the primary (deleted, or never written)."""


class CommitIncomplete(ReplicationError):
    """Raised when a primary commit is empty or unparseable: not yet committed, retry later."""

    retryable = True


class InvalidCommit(ReplicationError):
    """Raised when a commit is well-formed JSON but unsafe or too large to replicate."""


class DataFileMissing(ReplicationError):
    """Raised when a file a commit references is missing on the primary."""

    retryable = True


class ReplicaDiverged(ReplicationError):
    """Raised when a replica holds a log or data file that differs from the primary's."""


class WriteFenced(ReplicationError):
    """Raised when a commit or `_last_checkpoint` write is refused because the topology no longer names
    the invocation's primary at its epoch (a promote happened while it ran); nothing is written."""


class ReplicaBusy(ReplicationError):
    """Raised when another invocation holds a replica's replication lease for too long."""

    retryable = True


class ReplicaUnreachable(ReplicationError):
    """Raised when a storage account does not answer or refuses our requests."""

    retryable = True


class UnexpectedFailure(ReplicationError):
    """Raised when an exception nobody anticipated interrupts one replica's work; the cause is chained."""

    retryable = True


class NoReadableLocation(ReplicationError):
    """Raised when no location of a table qualifies for a read; `tried` says why each was skipped."""

    retryable = True

    def __init__(self, message: str, tried: list) -> None:
        super().__init__(message)
        self.tried = tried


class SourceHistoryMissing(ReplicationError):
    """Raised when a commit or data file a consolidation needs is gone from a source (vacuum, log cleanup)."""


class ConsolidationFailed(ReplicationError):
    """Raised when a consolidation cannot merge a source's rows (a missing key column, an unsupported feature)."""


class ConsolidationConflict(ReplicationError):
    """Raised when other writers to the global table won every commit attempt; the next run retries."""

    retryable = True


class TopologyConflict(ReplicationError):
    """Raised when the topology changed between reading it and changing it (another promote won)."""


class PromotionRefused(ReplicationError):
    """Raised when a promote cannot proceed safely (the target is behind, the primary answers, a timeout)."""


class RejoinRefused(ReplicationError):
    """Raised when a location cannot rejoin: its history up to the promotion differs from the primary's."""


class AccessDenied(ReplicationError):
    """Raised when storage refuses our credentials (401/403): retrying cannot help; the message names
    the connection setting and the permission to grant, and `hint` holds that advice alone."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class TopologyUnavailable(ReplicationError):
    """Raised when the ReplicationTopology cannot be read (host table storage down, or its table missing
    after a promotion has happened): acting on a guessed primary could write into a fenced location."""

    retryable = True


class LeaseLost(ReplicaBusy):
    """Raised when a lease holder could not renew its lease (or it may have expired): it stops
    before its next write, because another holder may be writing; the work is retried."""


class DeadlineExceeded(ReplicationError):
    """Raised when an invocation's deadline passed before a storage request: the work stops where
    it is (every write is conditional and ordered, so stopping anywhere is safe); retry resumes."""

    retryable = True
