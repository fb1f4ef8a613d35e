"""The one check for every path read from a Delta log.

add, remove and cdc paths, deletion vectors (`storageType` 'p': an absolute path or URI; 'u': a
prefix plus a UUID, relative), a v2 checkpoint's sidecars and a checkpoint's adds all pass through
here before anything (replication, retention, rejoin, replay, snapshots, consolidation) names a blob
after them. A path that is not a plain file inside the table raises `InvalidCommit` (not retryable):
a storage client would otherwise send `..` segments that the service (or an HTTP library, after a
SAS request was signed) resolves into another table, container or account.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from shared.errors import InvalidCommit

_LOG_DIR = "_delta_log"
# Azure blob names are at most 1,024 characters; a longer one can only be an attack or corruption.
MAX_BLOB_NAME = 1024
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SIDECAR_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+\.parquet$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class TableRoot:
    """Identifies a table's root so absolute URIs in the log can be recognised as inside it."""

    account: str
    container: str
    path: str

    def relative(self, uri: str) -> str | None:
        """The table-relative path of an absolute URI inside this table, else None."""
        parsed = urlparse(uri)
        scheme = parsed.scheme.lower()
        host = (parsed.hostname or "").lower()
        path = unquote(parsed.path).lstrip("/")
        if scheme in ("abfss", "abfs", "wasbs", "wasb"):
            # abfss://<container>@<account>.dfs.core.windows.net/<path>
            container = unquote(parsed.username or "")
            account = host.split(".")[0]
        elif scheme in ("https", "http"):
            if host in ("127.0.0.1", "localhost"):
                account, _, path = path.partition("/")
            else:
                account = host.split(".")[0]
            container, _, path = path.partition("/")
        elif scheme in ("az", "adl", "azure"):
            container, account = host, self.account if not parsed.username else host
            if parsed.username:
                container = unquote(parsed.username)
        else:
            return None
        if account.lower() != self.account.lower() or container != self.container:
            return None
        root = self.path.strip("/") + "/"
        if not path.startswith(root):
            return None
        return path[len(root):]


def _refuse(where: str, what: str, path: str, reason: str) -> InvalidCommit:
    shown = path if len(path) <= 200 else path[:200] + "..."
    return InvalidCommit(
        f"{where}: {what} path {shown!r} is not a file inside the table: it {reason}; refusing it "
        "(nothing is written). "
        "Inspect the primary's log: a Delta writer never produces such a path."
    )


def safe_relative_path(path: str, *, where: str, what: str = "file", root_path: str = "") -> str:
    """Check a decoded table-relative path names a plain file inside the table, outside `_delta_log`.

    Args:
        path: the table-relative path, URI-decoded once (as the Delta protocol stores it).
        where: table and version, for the message.
        what: the kind of path (add, remove, cdc, deletion vector, sidecar), for the message.
        root_path: the table's root inside its container, to bound the blob name's length.

    Raises:
        InvalidCommit: the path is empty, absolute, has empty, `.` or `..` segments (also once more
            percent-encoded), backslashes, NUL or other control characters, points into `_delta_log`,
            or makes a blob name longer than 1,024 characters.
    """
    if not isinstance(path, str) or not path:
        raise _refuse(where, what, str(path), "is empty or not a string")
    if _CONTROL_RE.search(path):
        raise _refuse(where, what, path, "contains NUL or control characters")
    if len(root_path.strip("/")) + 1 + len(path) > MAX_BLOB_NAME:
        raise _refuse(where, what, path, f"makes a blob name longer than {MAX_BLOB_NAME} characters")
    # Decoded once more too: a client or proxy that decodes again must not find a separator or dots.
    for candidate in (path, unquote(path)):
        if candidate.startswith("/") or "\\" in candidate or "\x00" in candidate:
            raise _refuse(where, what, path, "is absolute or has backslashes (also percent-encoded)")
        parts = candidate.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise _refuse(where, what, path, "has empty, '.' or '..' segments (also percent-encoded)")
        if parts[0] == _LOG_DIR:
            raise _refuse(where, what, path, "points into _delta_log (data never lands in the log)")
    return path


def table_path(raw, root: TableRoot, *, allow_external: bool, where: str, what: str) -> str | None:
    """The table-relative file an add, remove, cdc or deletion-vector ('p') path names.

    Relative paths are URI-encoded in the log and decoded here; absolute URIs inside the table are
    made relative; absolute URIs elsewhere (shallow clones) raise unless `allow_external`, and then
    return None (such files stay where they are).

    Raises:
        InvalidCommit: the path is not a plain file inside the table (see `safe_relative_path`), or
            an absolute URI outside the table is not allowed.
    """
    if not isinstance(raw, str):
        raise InvalidCommit(f"{where}: {what} path is not a string; refusing it (nothing is written).")
    if _SCHEME_RE.match(raw):
        rel = root.relative(raw)
        if rel is None:
            if allow_external:
                return None
            raise InvalidCommit(
                f"{where}: {what} references {raw.split('?')[0][:200]!r} outside the table "
                "(a shallow clone, or another account or container); refusing it (nothing is written). "
                "Set allow_external_files for this table if replicas may read files from there."
            )
    else:
        rel = unquote(raw)
    return safe_relative_path(rel, where=where, what=what, root_path=root.path)


_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_INDEX = {c: i for i, c in enumerate(_Z85)}


def z85_decode(text: str) -> bytes:
    """Decode Z85 (the Delta protocol's base85 for deletion-vector UUIDs)."""
    if len(text) % 5:
        raise ValueError("Z85 text length must be a multiple of 5")
    out = bytearray()
    for i in range(0, len(text), 5):
        value = 0
        for ch in text[i : i + 5]:
            try:
                value = value * 85 + _Z85_INDEX[ch]
            except KeyError:
                raise ValueError(f"invalid Z85 character {ch!r}") from None
        if value > 0xFFFFFFFF:
            raise ValueError("Z85 group out of range")
        out += value.to_bytes(4, "big")
    return bytes(out)


def deletion_vector_path(dv: dict) -> str | None:
    """The raw file of a deletion vector descriptor (unchecked; see `deletion_vector_file`), or None when inline.

    Storage type `u`: `<random prefix><20 char Z85 UUID>` -> `<prefix>/deletion_vector_<uuid>.bin`;
    `p`: an absolute path (returned as is); `i`: inline, no file.
    """
    kind = dv.get("storageType")
    value = dv.get("pathOrInlineDv")
    if kind == "i":
        return None
    if not isinstance(value, str) or not value:
        raise ValueError("deletion vector without pathOrInlineDv")
    if kind == "p":
        return value
    if kind == "u":
        if len(value) < 20:
            raise ValueError(f"deletion vector pathOrInlineDv {value!r} is too short for a UUID")
        prefix, encoded = value[:-20], value[-20:]
        name = f"deletion_vector_{uuid.UUID(bytes=z85_decode(encoded))}.bin"
        return f"{prefix}/{name}" if prefix else name
    raise ValueError(f"unknown deletion vector storageType {kind!r}")


def deletion_vector_file(dv, root: TableRoot, *, allow_external: bool, where: str) -> str | None:
    """The checked table-relative file of a deletion vector; None when inline or external (allowed).

    Raises:
        InvalidCommit: a malformed descriptor, or a path outside the table.
    """
    if not isinstance(dv, dict):
        raise InvalidCommit(f"{where}: deletion vector is not an object; refusing it (nothing is written).")
    try:
        raw = deletion_vector_path(dv)
    except (ValueError, TypeError) as err:
        raise InvalidCommit(f"{where}: invalid deletion vector ({err}); refusing it (nothing is written).") from err
    if raw is None:
        return None
    if dv.get("storageType") == "u":
        # Built from a random prefix and a UUID: already a plain relative path, never URI-encoded.
        return safe_relative_path(raw, where=where, what="deletion vector", root_path=root.path)
    return table_path(raw, root, allow_external=allow_external, where=where, what="deletion vector")


def sidecar_name(raw, root: TableRoot, *, where: str) -> str:
    """The `_delta_log`-relative name (`_sidecars/<file>.parquet`) of a sidecar a v2 checkpoint names.

    Sidecars always live in the table's own `_delta_log/_sidecars/` (Delta protocol), so only a plain
    file name, or an absolute URI to exactly that folder of this table, is accepted.

    Raises:
        InvalidCommit: anything else (`..`, separators, another table, account or container).
    """
    if not isinstance(raw, str) or not raw:
        raise InvalidCommit(f"{where}: sidecar path is empty or not a string; refusing it (nothing is written).")
    if _SCHEME_RE.match(raw):
        rel = root.relative(raw)
        prefix = f"{_LOG_DIR}/_sidecars/"
        if rel is None or not rel.startswith(prefix):
            raise _refuse(where, "sidecar", raw, "is not in this table's _delta_log/_sidecars/")
        name = rel[len(prefix):]
    else:
        name = unquote(raw)
    if not _SIDECAR_NAME_RE.match(name) or name.strip(".") != name or ".." in name:
        raise _refuse(where, "sidecar", raw, "is not a plain file name in _delta_log/_sidecars/")
    return f"_sidecars/{name}"


def store_root(store) -> TableRoot:
    """The TableRoot of a table store (its account, container and table path)."""
    return TableRoot(store.account_name, store.container, store.root)
