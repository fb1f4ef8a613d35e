"""Point reads of one Azure Table's rows without the SDK's pipeline: the write fence's read.

Before every commit write to every replica the write fence reads the table's ReplicationTopology
row (shared/replication/fence.py): one point read per commit and replica, the largest item of a
replicated commit's CPU once the blob requests went through object_store. Through azure-data-tables
that read costs 3.3 ms of CPU (3.7 ms when the row is absent, an exception parsed), through one
kept-alive `http.client` connection 0.5 ms, most of it parsing every response header through the
email package; through `_Connection` below, which reads only the status, the ETag and the body's
framing, 0.16 ms (Azurite, 1,000 reads each; h11, the sans-I/O HTTP library, took 0.46 ms).

So this module answers exactly two outcomes itself, the row (200) and no such row (404
ResourceNotFound), signed as the SDK signs them (Shared Key, SAS or a bearer token of the same
credential). Everything else (no answer, a timeout, 5xx, 403, a missing *table*, a proxy or an
unusual key) returns NOT_ANSWERED and the caller asks through the SDK, whose retries, error mapping
and missing-table handling stay the one definition of those paths.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import itertools
import json
import re
import socket
import ssl
import threading
import time
import uuid
from email.utils import formatdate
from urllib.parse import quote, urlsplit

from shared import deadline
from shared.storage.clients import CLIENT_REQUEST_ID_HEADER, CLIENT_REQUEST_ID_PREFIX
from shared.storage.object_client import _HttpRequest, _Sent

NOT_ANSWERED = object()  # the SDK must ask (see the module's docstring)
ABSENT = None  # the service answered: no such row
_enabled = True  # off while a CLI command runs (cli/deadline.py: its requests all pass through `requests`)


def set_enabled(enabled: bool) -> None:
    """Switch the lean reads on or off for this process (off: every read through the SDK)."""
    global _enabled
    _enabled = enabled


# Keys this reader signs itself; anything else (quotes, percent signs, non-ASCII) goes through the SDK.
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_.:~-]{1,255}$")
TIMEOUT_SECONDS = 5.0  # connect and read, each (the SDK path that may follow has its own)
COOL_OFF_SECONDS = 30.0  # after no answer, the SDK alone for this long: a dead host is not asked twice
TOKEN_SCOPE = "https://storage.azure.com/.default"
TOKEN_REFRESH_SECONDS = 300.0  # renew a bearer token this long before it expires
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")
MAX_RESPONSE_BYTES = 64 * 1024  # a topology row's answer is a few hundred bytes; more is not this reader's


class _Connection:
    """One kept-alive HTTP/1.1 connection: sends a GET and reads the answer's status, ETag and body,
    framed by Content-Length or chunked, at most MAX_RESPONSE_BYTES. Anything else it meets (another
    framing, an interim 1xx, a malformed line) raises http.client.HTTPException: the SDK then asks.
    A kept-alive connection the service closed while idle shows as ConnectionError before the first
    byte of the answer (the caller retries that once, on a new connection)."""

    def __init__(self, host: str, port: int, netloc: str, timeout: float, context: ssl.SSLContext | None) -> None:
        self.host = netloc  # the Host header, as http.client sends it
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(sock, server_hostname=host) if context is not None else sock
        self._buffer = b""

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def get(self, path: str, headers: dict, timeout: float) -> tuple[int, str | None, bytes]:
        if self.sock is None:
            raise ConnectionResetError("the connection was closed")
        self.sock.settimeout(timeout)
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAccept-Encoding: identity\r\n"
                          f"{lines}\r\n".encode("latin-1"))
        self._buffer = b""
        head = self._until(b"\r\n\r\n", first=True)
        status_line, *fields = head.split(b"\r\n")
        version, _, rest = status_line.partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or not code.isdigit() or rest[3:4] not in (b" ", b"") \
                or int(code) < 200:
            raise http.client.HTTPException(f"unexpected status line {status_line[:80]!r}")
        found = {}
        for field in fields:
            name, colon, value = field.partition(b":")
            if not colon:
                raise http.client.HTTPException("a malformed header line")
            found[name.strip().lower()] = value.strip()
        encoding, length = found.get(b"transfer-encoding"), found.get(b"content-length")
        if encoding is not None:
            if encoding.lower() != b"chunked":
                raise http.client.HTTPException(f"transfer encoding {encoding[:40]!r}")
            body = self._chunked()
        elif length is not None and length.isdigit() and int(length) <= MAX_RESPONSE_BYTES:
            body = self._exactly(int(length))
        else:
            raise http.client.HTTPException("a response without a length this reader reads")
        if self._buffer or found.get(b"connection", b"").lower() == b"close" or version == b"HTTP/1.0":
            self.close()  # not reusable: the service ends it, or it sent more than was asked for
        etag = found.get(b"etag")
        return int(code), None if etag is None else etag.decode("latin-1"), body

    def _fill(self, first: bool) -> None:
        data = self.sock.recv(65536)
        if not data:
            if first and not self._buffer:
                raise ConnectionResetError("the service closed the kept-alive connection")
            raise http.client.IncompleteRead(self._buffer)
        self._buffer += data
        if len(self._buffer) > MAX_RESPONSE_BYTES + 16 * 1024:
            raise http.client.HTTPException("a response larger than a point read's")

    def _until(self, marker: bytes, *, first: bool = False) -> bytes:
        while (at := self._buffer.find(marker)) < 0:
            self._fill(first)
        found, self._buffer = self._buffer[:at], self._buffer[at + len(marker):]
        return found

    def _exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._fill(False)
        found, self._buffer = self._buffer[:count], self._buffer[count:]
        return found

    def _chunked(self) -> bytes:
        body = b""
        while True:
            size = self._until(b"\r\n").split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size):  # hex digits only (int() would take "-2", "0x2", "0_2")
                raise http.client.HTTPException("a malformed chunk size")
            count = int(size, 16)
            if count == 0:
                while self._until(b"\r\n"):  # trailers, up to the empty line
                    pass
                return body
            if len(body) + count > MAX_RESPONSE_BYTES:
                raise http.client.HTTPException("a response larger than a point read's")
            body += self._exactly(count)
            if self._exactly(2) != b"\r\n":
                raise http.client.HTTPException("a malformed chunk")


# Each read's x-ms-client-request-id: an id made once at import and a sequence number (what the service
# logs beside it; unique per read within this process, which is all a request id is for here); a uuid4
# per read costs more CPU than the rest of the headers together.
_REQUEST_ID = CLIENT_REQUEST_ID_PREFIX + uuid.uuid4().hex
_request_ids = itertools.count()

_date = (0, "")


def _http_date() -> str:
    """The RFC 1123 date for x-ms-date, formatted once per second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]


class RowReader:
    """Point reads of one table of the function app's storage, over one kept-alive connection per thread.

    Args:
        table_client: the azure-data-tables TableClient the reads stand beside (its endpoint, table,
            credential and API version are used; requests never go through it).
        counter: a request counter (an SDK raw_request_hook), called once per request sent.
        ca_bundle: a CA bundle file for https endpoints (a private CA), else the system's roots.
    """

    def __init__(self, table_client, *, counter=None, ca_bundle: str | None = None) -> None:
        endpoint = urlsplit(table_client.url)
        self._scheme, self._host = endpoint.scheme, endpoint.netloc
        self._hostname = endpoint.hostname
        self._port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        self._base_path = endpoint.path.rstrip("/")
        self._table = table_client.table_name
        self._account = table_client.account_name
        self._version = table_client.api_version
        self._credential = table_client.credential
        self._key = None
        self._sas = None
        if hasattr(self._credential, "named_key"):
            # The key's HMAC state, copied per request: the key's padding is not recomputed each time.
            self._key = hmac.new(base64.b64decode(self._credential.named_key.key), digestmod=hashlib.sha256)
        elif hasattr(self._credential, "signature"):
            self._sas = self._credential.signature.lstrip("?")
        self._token: tuple[str, float] | None = None
        self._token_lock = threading.Lock()
        self._counter = counter
        self._context = ssl.create_default_context(cafile=ca_bundle) if self._scheme == "https" else None
        self._local = threading.local()
        self._connections: set = set()  # every thread's, for close(): at most one per thread that read
        self._cool_until = 0.0
        self.answered = 0  # reads this reader answered itself (200 or 404 ResourceNotFound)

    def get(self, partition: str, row: str):
        """The row's columns and ETag (`(dict, etag)`), ABSENT when the service says there is no such
        row, or NOT_ANSWERED: ask through the SDK (see the module's docstring).

        Raises:
            DeadlineExceeded: the invocation's deadline passed (as the SDK's hook raises it).
        """
        if not _enabled or not (_PLAIN_KEY.match(partition) and _PLAIN_KEY.match(row)) or \
                time.monotonic() < self._cool_until:
            return NOT_ANSWERED
        path = f"{self._base_path}/{self._table}(PartitionKey='{quote(partition)}',RowKey='{quote(row)}')"
        url = f"{self._scheme}://{self._host}{path}"
        left = deadline.check(f"GET {path}", grace=deadline.RECORD_GRACE_SECONDS)
        timeout = TIMEOUT_SECONDS if left is None else min(TIMEOUT_SECONDS, left)
        try:
            headers = self._headers(path)
        except Exception:  # noqa: BLE001 - a credential that cannot sign: the SDK path says why
            return NOT_ANSWERED
        if self._sas:
            path, url = f"{path}?{self._sas}", f"{url}?{self._sas}"
        if self._counter is not None:
            self._counter(_Sent(_HttpRequest("GET", lambda: (url, headers))))
        try:
            status, etag, body = self._send(path, headers, timeout)
        except (OSError, http.client.HTTPException):
            self._cool_until = time.monotonic() + COOL_OFF_SECONDS
            return NOT_ANSWERED
        if status == 200:
            try:
                columns = json.loads(body)
            except ValueError:  # not the service's JSON (a proxy's page): the SDK says what it is
                return NOT_ANSWERED
            if not isinstance(columns, dict):
                return NOT_ANSWERED
            self._answered()
            return columns, etag
        if status == 404 and b'"ResourceNotFound"' in body:
            self._answered()
            return ABSENT  # the table exists, the row does not (TableNotFound is the SDK's to handle)
        return NOT_ANSWERED

    def _answered(self) -> None:
        with self._token_lock:
            self.answered += 1

    def _headers(self, path: str) -> dict:
        date = _http_date()
        headers = {"x-ms-date": date, "x-ms-version": self._version, "DataServiceVersion": "3.0",
                   "Accept": "application/json;odata=nometadata",
                   CLIENT_REQUEST_ID_HEADER: f"{_REQUEST_ID}-{next(_request_ids)}"}
        if self._key is not None:
            # Shared Key for the Table service, as azure-data-tables signs a GET: verb, Content-MD5,
            # Content-Type, x-ms-date, then the account and the request's (encoded) path.
            mac = self._key.copy()
            mac.update(f"GET\n\n\n{date}\n/{self._account}{path}".encode())
            signature = base64.b64encode(mac.digest()).decode()
            headers["Authorization"] = f"SharedKey {self._account}:{signature}"
        elif self._sas is None:
            headers["Authorization"] = f"Bearer {self._bearer()}"
        return headers

    def _bearer(self) -> str:
        """A token of the same credential the SDK client holds, renewed before it expires."""
        with self._token_lock:
            if self._token is None or self._token[1] - time.time() < TOKEN_REFRESH_SECONDS:
                token = self._credential.get_token(TOKEN_SCOPE)
                self._token = (token.token, float(token.expires_on))
            return self._token[0]

    def _send(self, path: str, headers: dict, timeout: float) -> tuple[int, str | None, bytes]:
        """One GET on this thread's connection; a kept-alive connection the service closed meanwhile
        is replaced once (a new connection's failure is the answer)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None and connection.sock is None:  # closed after its last answer
            self._drop(connection)
            connection = None
        for fresh in ((False, True) if connection is not None else (True,)):
            try:
                if fresh:
                    connection = self._connect(timeout)
                return connection.get(path, headers, timeout)
            except Exception as err:
                if connection is not None:
                    connection.close()  # a half-used connection is never reused
                    self._drop(connection)
                # Only a kept-alive connection the service closed is tried again; a timeout is the answer.
                if fresh or not isinstance(err, ConnectionError):
                    raise
        raise AssertionError("unreachable")

    def _drop(self, connection: _Connection) -> None:
        self._local.connection = None
        with self._token_lock:
            self._connections.discard(connection)

    def _connect(self, timeout: float) -> _Connection:
        connection = _Connection(self._hostname, self._port, self._host, timeout, self._context)
        self._local.connection = connection
        with self._token_lock:
            self._connections.add(connection)
        return connection

    def close(self) -> None:
        """Close every thread's connection."""
        with self._token_lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            connection.close()
