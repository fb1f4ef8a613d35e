"""The Delta log's vocabulary: version <-> file names, commit actions -> referenced files.

Follows the Delta protocol (PROTOCOL.md): commits `_delta_log/<20 digits>.json`,
checkpoints (classic `<v>.checkpoint.parquet`, multi-part `<v>.checkpoint.<p>.<n>.parquet`,
v2 `<v>.checkpoint.<uuid>.json|parquet` with sidecars in `_delta_log/_sidecars/`),
`<v>.crc`, `_last_checkpoint`. Paths in actions are relative, URI-encoded paths or
absolute URIs.
"""

from __future__ import annotations

import enum
import io
import json
import re
from dataclasses import dataclass

from shared.delta.paths import (  # noqa: F401 - the path check's names, re-exported for log readers
    _Z85,
    MAX_BLOB_NAME,
    TableRoot,
    deletion_vector_file,
    deletion_vector_path,
    safe_relative_path,
    sidecar_name,
    table_path,
    z85_decode,
)
from shared.errors import CommitIncomplete, InvalidCommit

# The log folder and its pointer file are named by the storage boundary (its operations are
# Delta-shaped), which sits below this module.
from shared.storage.table_store import LAST_CHECKPOINT, LOG_DIR  # noqa: E402,F401 - re-exported

SIDECAR_DIR = "_sidecars"
VERSION_DIGITS = 20


class LogFileKind(enum.Enum):
    COMMIT = "commit"
    CHECKPOINT = "checkpoint"  # classic single file
    CHECKPOINT_PART = "checkpoint_part"  # multi-part
    CHECKPOINT_V2 = "checkpoint_v2"  # UUID-named (json or parquet)
    CRC = "crc"
    LAST_CHECKPOINT = "last_checkpoint"
    SIDECAR = "sidecar"


_LOG_NAME_RE = re.compile(
    r"^(?P<version>\d{20})\."
    r"(?:(?P<commit>json)"
    r"|(?P<crc>crc)"
    r"|checkpoint\.parquet(?P<classic>)"
    r"|checkpoint\.(?P<part>\d{10})\.(?P<parts>\d{10})\.parquet"
    r"|checkpoint\.(?P<uuid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\.(?:json|parquet))$"
)
_SIDECAR_RE = re.compile(r"^_sidecars/[A-Za-z0-9._-]+\.parquet$")


@dataclass(frozen=True)
class LogFile:
    """A replicable file in `_delta_log/`; `name` is relative to `_delta_log/`."""

    name: str
    kind: LogFileKind
    version: int | None = None
    part: int | None = None
    parts: int | None = None


def commit_name(version: int) -> str:
    """`_delta_log`-relative name of a version's commit: `00000000000000000042.json`."""
    if version < 0:
        raise ValueError(f"a Delta version is never negative (got {version})")
    return f"{version:020d}.json"


def version_prefix(version: int) -> str:
    """The zero-padded version every log file name of that version starts with."""
    return f"{version:020d}"


def crc_name(version: int) -> str:
    """`_delta_log`-relative name of a version's checksum file: `00000000000000000042.crc`."""
    return f"{version_prefix(version)}.crc"


def parse_log_name(name: str) -> LogFile | None:
    """Classify a `_delta_log`-relative name; None for temporary, hidden or unknown files.

    Example:
        >>> parse_log_name("00000000000000000010.checkpoint.parquet").kind
        <LogFileKind.CHECKPOINT: 'checkpoint'>
    """
    if name == LAST_CHECKPOINT:
        return LogFile(name, LogFileKind.LAST_CHECKPOINT)
    if _SIDECAR_RE.match(name):
        return LogFile(name, LogFileKind.SIDECAR)
    m = _LOG_NAME_RE.match(name)
    if not m:
        return None
    version = int(m["version"])
    if m["commit"]:
        return LogFile(name, LogFileKind.COMMIT, version)
    if m["crc"]:
        return LogFile(name, LogFileKind.CRC, version)
    if m["classic"] is not None:
        return LogFile(name, LogFileKind.CHECKPOINT, version, 1, 1)
    if m["part"]:
        part, parts = int(m["part"]), int(m["parts"])
        if not 1 <= part <= parts:
            return None
        return LogFile(name, LogFileKind.CHECKPOINT_PART, version, part, parts)
    return LogFile(name, LogFileKind.CHECKPOINT_V2, version)


def parse_commit(data: bytes, *, where: str) -> list[dict]:
    """Parse a commit (newline-delimited JSON actions).

    Raises:
        CommitIncomplete: the commit is empty or not valid JSON lines. On the primary this
            means the writer has not finished (ADLS CreateFile fires before content).
    """
    if not data.strip():
        raise CommitIncomplete(f"{where} is empty; the commit is not complete yet. It will be retried.")
    actions = []
    # Line by line from the bytes: no decoded copy of the whole commit is ever held.
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            action = json.loads(line)
        except UnicodeDecodeError as err:
            raise CommitIncomplete(f"{where} is not UTF-8 text; not a complete commit yet. It will be retried.") from err
        except json.JSONDecodeError as err:
            raise CommitIncomplete(
                f"{where} line {lineno} is not valid JSON ({err.msg}); the commit is incomplete "
                "or corrupt. It will be retried; if it persists, inspect the primary's commit."
            ) from err
        if not isinstance(action, dict):
            raise CommitIncomplete(f"{where} line {lineno} is not a JSON object; not a Delta commit.")
        actions.append(action)
    return actions


# --- referenced files -------------------------------------------------------------
# Every path read from a log goes through shared.delta.paths (the one check); re-exported here.


@dataclass(frozen=True)
class ReferencedFile:
    """A file an action needs: table-relative `path`, and `size` when the log records it."""

    path: str
    size: int | None = None


def referenced_files(actions: list[dict], root: TableRoot, *, allow_external: bool, where: str) -> list[ReferencedFile]:
    """The table-relative files that `add`, `cdc` and deletion vectors of `actions` need; every
    `remove` path is checked too (retention and consolidation act on them).

    Relative paths are URI-encoded in the log and are decoded here; absolute URIs inside
    the table are made relative; absolute URIs elsewhere (shallow clones) raise unless
    `allow_external`, and are then left where they are (readers fetch them from there).

    Raises:
        InvalidCommit: a path escapes the table, or an external URI is not allowed.
    """
    files: dict[str, ReferencedFile] = {}

    def keep(rel: str | None, size) -> None:
        if rel is not None and (rel not in files or files[rel].size is None):
            files[rel] = ReferencedFile(rel, size if isinstance(size, int) else None)

    for action in actions:
        for key in ("add", "cdc", "remove"):
            body = action.get(key)
            if body is None:
                continue
            if not isinstance(body, dict) or "path" not in body:
                raise InvalidCommit(f"{where}: {key} action without a path; refusing it (nothing is written).")
            rel = table_path(body["path"], root, allow_external=allow_external, where=where, what=key)
            dv = body.get("deletionVector") if key in ("add", "remove") else None
            dv_rel = deletion_vector_file(dv, root, allow_external=allow_external, where=where) if dv else None
            if key != "remove":
                keep(rel, body.get("size"))
                if dv_rel is not None:
                    files.setdefault(dv_rel, ReferencedFile(dv_rel))
    return list(files.values())


def checkpoint_actions(data: bytes, *, is_json: bool) -> list[dict]:
    """Actions of a checkpoint or sidecar file that matter for copying: add and sidecar.

    See `iter_checkpoint_actions`, which streams instead of holding every action.
    """
    return [a for chunk in iter_checkpoint_actions(io.BytesIO(data), is_json=is_json) for a in chunk]


def iter_checkpoint_actions(fileobj, *, is_json: bool, batch_rows: int = 4096):
    """Yield the add and sidecar actions of a checkpoint or sidecar file, a batch at a time.

    Parquet checkpoints are read column-wise (only `add.path`, `add.size`,
    `add.deletionVector`, and `sidecar`) one record batch at a time, so memory is bounded by
    `batch_rows` whatever the table's size; stats and metadata are never materialised.

    Args:
        fileobj: a seekable binary file holding the checkpoint.
        is_json: a JSON (v2) checkpoint rather than parquet.
        batch_rows: rows per yielded batch.
    """
    if is_json:
        fileobj.seek(0)
        chunk: list[dict] = []
        for number, line in enumerate(fileobj, 1):
            if not line.strip():
                continue
            for action in parse_commit(line, where=f"checkpoint line {number}"):
                if "add" in action or "sidecar" in action:
                    chunk.append(action)
            if len(chunk) >= batch_rows:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
        return
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(fileobj)
    names = set(pf.schema_arrow.names)
    if "add" in names:
        add_type = pf.schema_arrow.field("add").type
        wanted = [f"add.{n}" for n in ("path", "size", "deletionVector") if add_type.get_field_index(n) >= 0]
        for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted):
            chunk = [{"add": row} for row in batch.column(0).to_pylist() if row and row.get("path")]
            if chunk:
                yield chunk
    if "sidecar" in names:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=["sidecar"]):
            chunk = [{"sidecar": row} for row in batch.column(0).to_pylist() if row and row.get("path")]
            if chunk:
                yield chunk
