"""The write fence's lean point read (shared/storage/table_row.py) against Azurite's Table service: it answers
the row and the absent row exactly as azure-data-tables does, signed by key or SAS, and hands everything
else (a refused credential, a missing table, no answer) to the SDK path unchanged."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.data.tables import (AccountSasPermissions, EdmType, EntityProperty, ResourceTypes, TableServiceClient, UpdateMode,
                               generate_account_sas)

from devtools.azurite import DEVSTORE_ACCOUNT, DEVSTORE_KEY, free_port
from shared.config.model import LocationConfig, TableConfig
from shared.errors import AccessDenied, ReplicaUnreachable
from shared.failover.topology import ROW_KEY, TopologyStore, default_topology
from shared.storage.clients import CLIENT_REQUEST_ID_HEADER, CLIENT_REQUEST_ID_PREFIX
from shared.storage.table_row import ABSENT, NOT_ANSWERED, RowReader


class Requests:
    """A request counter (the runtime's raw_request_hook shape): the URLs sent."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, request) -> None:
        self.urls.append(request.http_request.url)


def _table(name: str) -> TableConfig:
    return TableConfig(name=name, source=LocationConfig(name="eastus", connection="EASTUS_STORAGE", container="c",
                                                        path="t"), replicas=())


@pytest.fixture
def tables(azurite):
    with TableServiceClient.from_connection_string(azurite.connection_string(DEVSTORE_ACCOUNT)) as service:
        yield service


def test_a_row_and_an_absent_row_read_as_the_sdk_reads_them(tables):
    name = "t" + uuid.uuid4().hex[:10]
    requests = Requests()
    lean = TopologyStore(tables, rows=lambda client: RowReader(client, counter=requests))
    sdk = TopologyStore(tables)
    assert lean.get(_table(name)) == sdk.get(_table(name)) == default_topology(_table(name))
    flipped = sdk.flip(sdk.get(_table(name)), "westeu", 7)
    read = lean.get(_table(name))
    assert read == sdk.get(_table(name)) == flipped  # etag included
    assert (read.primary, read.epoch, read.promoted_at_version, read.previous_primary) == ("westeu", 1, 7, "eastus")
    assert lean._rows.answered == 2
    assert [url.rsplit("/", 1)[1] for url in requests.urls] == [
        f"ReplicationTopology(PartitionKey='{name}',RowKey='{ROW_KEY}')"] * 2
    # The ETag it read guards a flip as the SDK's does: the next promote from it wins.
    assert lean.flip(read, "seasia", 9).epoch == 2
    # 64-bit numbers arrive without type metadata as strings: still the same values.
    tables.get_table_client("ReplicationTopology").upsert_entity(
        {"PartitionKey": name, "RowKey": ROW_KEY, "Primary": "seasia", "Epoch": 2,
         "PromotedAtVersion": EntityProperty(2**40, EdmType.INT64)}, mode=UpdateMode.MERGE)
    read = lean.get(_table(name))
    assert read == sdk.get(_table(name)) and read.promoted_at_version == 2**40


def test_a_sas_connection_is_answered_and_a_refused_key_goes_to_the_sdk_which_says_why(azurite, tables):
    name = "t" + uuid.uuid4().hex[:10]
    TopologyStore(tables).flip(default_topology(_table(name)), "westeu", 1)
    sas = generate_account_sas(AzureNamedKeyCredential(DEVSTORE_ACCOUNT, DEVSTORE_KEY),
                               ResourceTypes(service=True, object=True), AccountSasPermissions(read=True),
                               datetime.now(timezone.utc) + timedelta(hours=1))
    endpoint = f"http://127.0.0.1:{azurite.table_port}/{DEVSTORE_ACCOUNT}"
    with TableServiceClient.from_connection_string(f"TableEndpoint={endpoint};SharedAccessSignature={sas}") as by_sas:
        store = TopologyStore(by_sas, rows=RowReader)
        assert (store.get(_table(name)).primary, store._rows.answered) == ("westeu", 1)
    wrong = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + \
        "d3Jvbmc=" * 11 + ";TableEndpoint=" + endpoint
    with TableServiceClient.from_connection_string(wrong) as refused:
        reader = RowReader(refused.get_table_client("ReplicationTopology"))
        assert reader.get(name, ROW_KEY) is NOT_ANSWERED  # 403: not this reader's to explain
        with pytest.raises(AccessDenied, match="ReplicationTopology"):
            TopologyStore(refused, rows=RowReader).get(_table(name))


def test_a_missing_table_is_the_sdks_and_no_answer_cools_off(azurite):
    with TableServiceClient.from_connection_string(azurite.connection_string(DEVSTORE_ACCOUNT)) as service:
        missing = RowReader(service.get_table_client("NoSuchTable" + uuid.uuid4().hex[:8]))
        assert missing.get("t", ROW_KEY) is NOT_ANSWERED  # TableNotFound: the markers decide (markers.py)
        assert RowReader(service.get_table_client("ReplicationTopology")).get("absent-row", ROW_KEY) is ABSENT
    dead = f"DefaultEndpointsProtocol=http;AccountName={DEVSTORE_ACCOUNT};AccountKey={DEVSTORE_KEY};" \
           f"TableEndpoint=http://127.0.0.1:{free_port()}/{DEVSTORE_ACCOUNT}"
    requests = Requests()
    with TableServiceClient.from_connection_string(dead, retry_total=0) as service:
        reader = RowReader(service.get_table_client("ReplicationTopology"), counter=requests)
        assert reader.get("t", ROW_KEY) is NOT_ANSWERED
        assert reader.get("t", ROW_KEY) is NOT_ANSWERED
        assert len(requests.urls) == 1  # the second read did not ask a host that did not answer
        # Keys it would have to escape are the SDK's too, without a request.
        assert reader.get("it's", ROW_KEY) is NOT_ANSWERED and len(requests.urls) == 1
        with pytest.raises(ReplicaUnreachable):
            TopologyStore(service, rows=lambda client: reader).get(_table("t"))


def test_a_kept_alive_connection_the_service_closed_is_replaced_once_and_the_deadline_holds(tables):
    import socket

    from shared import deadline
    from shared.errors import DeadlineExceeded

    reader = RowReader(tables.get_table_client("ReplicationTopology"))
    assert reader.get("absent-row", ROW_KEY) is ABSENT
    # The service closing an idle kept-alive connection, as seen from this side: the next send fails.
    reader._local.connection.sock.shutdown(socket.SHUT_RDWR)
    assert reader.get("absent-row", ROW_KEY) is ABSENT  # on a new connection, not handed to the SDK
    assert reader.answered == 2
    assert len(reader._connections) == 1  # the closed one is not kept for close()
    # Past the deadline and the grace the function app's tables get for recording an outcome.
    with deadline.within(-deadline.RECORD_GRACE_SECONDS - 1, "a test invocation"):
        with pytest.raises(DeadlineExceeded, match="a test invocation"):
            reader.get("absent-row", ROW_KEY)
    assert reader.answered == 2


def test_reads_from_many_threads_each_on_their_own_connection(tables):
    from concurrent.futures import ThreadPoolExecutor

    import threading

    reader = RowReader(tables.get_table_client("ReplicationTopology"))
    threads = set()

    def read(i: int):
        threads.add(threading.get_ident())
        return reader.get(f"absent-{i % 5}", ROW_KEY)

    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(read, range(200)))
    assert found == [ABSENT] * 200 and reader.answered == 200
    assert len(reader._connections) == len(threads)
    opened = list(reader._connections)
    assert all(c.sock is not None for c in opened)
    reader.close()
    assert all(c.sock is None for c in opened) and not reader._connections


def test_a_cli_command_reads_the_topology_through_the_sdk(tables):
    """While a CLI command runs every request goes through `requests` (cli/deadline.py names the endpoint a
    timed-out command waited on); the lean read steps aside and comes back after."""
    from cli.deadline import deactivate, set_deadline

    reader = RowReader(tables.get_table_client("ReplicationTopology"))
    set_deadline(5)
    try:
        assert reader.get("absent-row", ROW_KEY) is NOT_ANSWERED
    finally:
        deactivate()
    assert reader.get("absent-row", ROW_KEY) is ABSENT


class _CannedServer:
    """A loopback socket that answers each request on one connection with the next canned bytes (the
    framings a service may choose, which Azurite does not: it always sends chunked)."""

    def __init__(self, answers: list[bytes]) -> None:
        import socket
        import threading

        self.answers, self.requests = list(answers), []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            buffer = b""
            for answer in self.answers:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                request, _, buffer = buffer.partition(b"\r\n\r\n")
                self.requests.append(request)
                if answer:
                    conn.sendall(answer)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


def test_the_lean_connection_reads_each_framing_and_refuses_what_it_does_not_know():
    import http.client

    from shared.storage.table_row import MAX_RESPONSE_BYTES, _Connection

    body = b'{"Primary":"westeu"}'
    server = _CannedServer([
        b"HTTP/1.1 200 OK\r\nETag: W/\"e1\"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\nX-T: y\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    ])
    try:
        connection = _Connection("127.0.0.1", server.port, f"127.0.0.1:{server.port}", 5.0, None)
        assert connection.get("/a/T(PartitionKey='p',RowKey='r')", {"x-ms-date": "d"}, 5.0) == (200, 'W/"e1"', body)
        assert connection.get("/a/b", {}, 5.0) == (404, None, b'{"a": 1}')  # the same connection, kept alive
        assert connection.get("/a/c", {}, 5.0) == (200, None, b"{}") and connection.sock is None  # the service ends it
        first = server.requests[0].split(b"\r\n")
        assert first[0] == b"GET /a/T(PartitionKey='p',RowKey='r') HTTP/1.1"
        assert set(first[1:]) == {b"Host: 127.0.0.1:%d" % server.port, b"Accept-Encoding: identity", b"x-ms-date: d"}
    finally:
        server.close()
    refused = [
        b"HTTP/1.1 200 OK\r\n\r\n{}",  # no length: read to the end, which a kept-alive connection never reaches
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_RESPONSE_BYTES + 1),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"ICY 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 2001 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n",
    ]
    for answer in refused:
        server = _CannedServer([answer])
        try:
            connection = _Connection("127.0.0.1", server.port, "h", 5.0, None)
            with pytest.raises(http.client.HTTPException):
                connection.get("/a/b", {}, 2.0)
        finally:
            server.close()
    server = _CannedServer([b""])  # the service closes without answering (an idle connection it ended)
    try:
        connection = _Connection("127.0.0.1", server.port, "h", 5.0, None)
        with pytest.raises(ConnectionError):
            connection.get("/a/b", {}, 2.0)
    finally:
        server.close()


def test_a_bearer_token_is_reused_until_near_its_expiry_then_renewed():
    """Identity connections sign the lean read with a token of the SDK client's own credential: asked once,
    reused, renewed TOKEN_REFRESH_SECONDS before it expires (never sent about to expire)."""
    import time

    from azure.core.credentials import AccessToken
    from azure.data.tables import TableClient

    from shared.storage.table_row import TOKEN_REFRESH_SECONDS, TOKEN_SCOPE

    class Credential:  # what azure-identity hands the SDK clients: get_token(scope) -> AccessToken
        def __init__(self) -> None:
            self.scopes: list[tuple] = []
            self.lifetime = 3600

        def get_token(self, *scopes, **kwargs):
            self.scopes.append(scopes)
            return AccessToken(f"token-{len(self.scopes)}", int(time.time()) + self.lifetime)

    credential = Credential()
    client = TableClient(endpoint="https://account.table.core.windows.net", table_name="ReplicationTopology",
                         credential=credential)  # never contacted: only the headers are built
    reader = RowReader(client)
    path = "/ReplicationTopology(PartitionKey='t',RowKey='r')"
    assert [reader._headers(path)["Authorization"] for _ in range(3)] == ["Bearer token-1"] * 3
    assert credential.scopes == [(TOKEN_SCOPE,)]
    credential.lifetime = int(TOKEN_REFRESH_SECONDS) - 60  # each new token is already within the margin
    reader._token = (reader._token[0], time.time() + TOKEN_REFRESH_SECONDS - 1)
    assert [reader._headers(path)["Authorization"] for _ in range(2)] == ["Bearer token-2", "Bearer token-3"]
    assert "x-ms-date" in reader._headers(path) and len(credential.scopes) == 4


class _ConnectionServer:
    """A loopback socket serving every connection it accepts: each request gets the next of `answers`
    (None: no answer at all, the request hangs until the client gives up). Counts connections accepted."""

    def __init__(self, answers: list[bytes | None]) -> None:
        import socket
        import threading

        self.answers, self.accepted, self.requests = list(answers), 0, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.idle = threading.Event()  # set when a request is left unanswered
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                buffer = b""
                while self.answers:
                    while b"\r\n\r\n" not in buffer:
                        data = conn.recv(65536)
                        if not data:
                            break
                        buffer += data
                    if b"\r\n\r\n" not in buffer:
                        break  # the client closed this connection: take the next one
                    request, _, buffer = buffer.partition(b"\r\n\r\n")
                    self.requests.append(request)
                    answer = self.answers.pop(0)
                    if answer is None:
                        self.idle.set()
                        conn.recv(65536)  # until the client gives up on it
                        break
                    conn.sendall(answer)

    def reader(self, counter=None) -> RowReader:
        """A RowReader on this server (the SDK's TableClient supplies endpoint and key; it sends nothing)."""
        conn = (f"DefaultEndpointsProtocol=http;AccountName={DEVSTORE_ACCOUNT};AccountKey={DEVSTORE_KEY};"
                f"TableEndpoint=http://127.0.0.1:{self.port}/{DEVSTORE_ACCOUNT};")
        return RowReader(TableServiceClient.from_connection_string(conn).get_table_client("ReplicationTopology"),
                         counter=counter)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


_ABSENT_ANSWER = (b'HTTP/1.1 404 Not Found\r\nContent-Length: 47\r\n\r\n'
                  b'{"odata.error":{"code":"ResourceNotFound"}}    ')


def test_a_timed_out_read_is_not_sent_again_and_the_sdk_asks_from_then_on():
    """A timeout is the answer (only a kept-alive connection the service closed is tried again): one
    connection, one wait, then NOT_ANSWERED and the cool-off (the SDK asks meanwhile)."""
    import time

    from shared import deadline

    server = _ConnectionServer([_ABSENT_ANSWER, None, _ABSENT_ANSWER])
    try:
        reader = server.reader()
        assert reader.get("p", ROW_KEY) is ABSENT  # a kept-alive connection
        started = time.monotonic()
        # The read's timeout is what is left of the invocation's deadline (with the recording grace): 0.5 s.
        with deadline.within(0.5 - deadline.RECORD_GRACE_SECONDS, "a test invocation"):
            assert reader.get("p", ROW_KEY) is NOT_ANSWERED
        waited = time.monotonic() - started
        assert server.idle.is_set() and 0.4 < waited < 0.9, waited  # one timeout, not two
        assert server.accepted == 1
        assert reader.get("p", ROW_KEY) is NOT_ANSWERED  # cooling off: not sent
        assert server.accepted == 1 and reader.answered == 1
    finally:
        server.close()


def test_connections_the_service_closes_after_answering_are_not_kept():
    """`Connection: close` answers: each read opens a new connection, and the closed ones are dropped from
    those close() ends (the set stays at one per thread, whatever the number of reads)."""
    closing = (b'HTTP/1.1 404 Not Found\r\nContent-Length: 47\r\nConnection: close\r\n\r\n'
               b'{"odata.error":{"code":"ResourceNotFound"}}    ')
    server = _ConnectionServer([closing] * 4)
    shown = []  # what a request counter is shown: each request's URL and request id, as sent
    try:
        reader = server.reader(counter=lambda r: shown.append(
            (r.http_request.url, r.http_request.headers[CLIENT_REQUEST_ID_HEADER])))
        assert [reader.get("p", ROW_KEY) for _ in range(4)] == [ABSENT] * 4
        assert server.accepted == 4 and reader.answered == 4
        assert len(reader._connections) == 1
        # Each read carries the prefix the Event Grid filters drop, and its own id.
        ids = [line.split(b": ", 1)[1].decode() for r in server.requests for line in r.split(b"\r\n")
               if line.lower().startswith(b"x-ms-client-request-id:")]
        assert len(ids) == 4 == len(set(ids)) and all(i.startswith(CLIENT_REQUEST_ID_PREFIX) for i in ids), ids
        paths = [r.split(b"\r\n", 1)[0].split(b" ")[1].decode() for r in server.requests]
        assert shown == [(f"http://127.0.0.1:{server.port}{p}", i) for p, i in zip(paths, ids)]
        assert paths == [f"/{DEVSTORE_ACCOUNT}/ReplicationTopology(PartitionKey='p',RowKey='{ROW_KEY}')"] * 4
    finally:
        server.close()


def test_an_answer_followed_by_unasked_bytes_ends_the_connection():
    """More bytes than the answer (a second response nobody asked for) make the connection unusable: it is
    closed, so the next read cannot take those bytes for its own answer."""
    from shared.storage.table_row import _Connection

    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    server = _CannedServer([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}" + extra])
    try:
        connection = _Connection("127.0.0.1", server.port, "h", 5.0, None)
        assert connection.get("/a/b", {}, 5.0) == (200, None, b"{}")
        assert connection.sock is None
    finally:
        server.close()
