"""Every implementation of the storage boundary behaves the same (shared/storage/table_store.py).

Like litestream's replica-client tests: one suite, exact outcomes, run against each implementation
on Azurite: "blob" (`BlobTableStore`, the SDK only) and "obstore" (`ObjectTableStore`, its hot path
on object_store). A store is always built by `shared.storage.factory.Stores`, as the app builds it.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.request import urlopen

import pytest

from devtools.azurite import account_key
from shared import deadline
from shared.config.settings import resolve_connection
from shared.errors import AccessDenied, DataFileMissing, DeadlineExceeded, ReplicaDiverged, ReplicaUnreachable
from shared.storage import table_store
from shared.storage.clients import CLIENT_REQUEST_ID_HEADER, CLIENT_REQUEST_ID_PREFIX, build_blob_service_client
from shared.storage.factory import Stores
from shared.storage.object_client import ObjectClients
from shared.storage.signing import sas_permissions

IMPLEMENTATIONS = ["blob", "obstore"]


@pytest.fixture(params=IMPLEMENTATIONS)
def stores(request, azurite):
    """(this table's store, another location's store of the same table, a factory) in a fresh container."""
    environ = {f"{a.upper()}_STORAGE": azurite.connection_string(a) for a in ("eastus", "westeu")}
    settings = {name: resolve_connection(name, environ) for name in environ}
    clients = {name: build_blob_service_client(s) for name, s in settings.items()}
    container = f"conf-{uuid.uuid4().hex[:12]}"
    factory = Stores(clients, ObjectClients(settings) if request.param == "obstore" else None)
    here = SimpleNamespace(name="here", connection="EASTUS_STORAGE", container=container, path="delta/t")
    there = SimpleNamespace(name="there", connection="WESTEU_STORAGE", container=container, path="delta/t")
    yield factory.table(here), factory.table(there), factory, here
    for client in clients.values():
        try:
            client.delete_container(container)
        except Exception:  # noqa: BLE001 - never created by some tests
            pass
        client.close()


def test_the_implementation_has_every_operation_the_protocols_declare(stores):
    store = stores[0]
    declared = {name for proto in (table_store.TableStore, table_store.MaintenanceStore)
                for name, _ in inspect.getmembers(proto) if not name.startswith("_")}
    declared |= set(table_store.TableStore.__annotations__) | set(table_store.MaintenanceStore.__annotations__)
    missing = sorted(n for n in declared if not hasattr(store, n))
    assert missing == []


def test_log_files_are_created_once_and_listed_in_name_order(stores):
    store = stores[0]
    assert store.list_log() == [] and store.log_exists() is False and store.log_entry("x.json") is None
    assert store.create_log_file("00000000000000000001.json", b"one\n") is True
    assert store.create_log_file("00000000000000000000.json", b"zero\n") is True
    assert store.create_log_file("00000000000000000001.json", b"other\n") is False
    assert store.get_log_file("00000000000000000001.json") == b"one\n"  # never overwritten
    assert [e.name for e in store.list_log()] == ["00000000000000000000.json", "00000000000000000001.json"]
    assert [e.name for e in store.list_log(limit=1)] == ["00000000000000000000.json"]
    assert [e.name for e in store.list_log("00000000000000000001")] == ["00000000000000000001.json"]
    entry = store.log_entry("00000000000000000001.json")
    assert (entry.size, entry.content_md5) == (4, hashlib.md5(b"one\n").digest())  # compare.same_commit uses it
    assert store.list_log("00000000000000000001")[0].content_md5 == hashlib.md5(b"one\n").digest()
    assert store.log_exists() is True
    assert store.get_log_range("00000000000000000001.json", 1, 2) == (b"ne", 4)
    assert store.get_log_range("00000000000000000009.json", 0, 2) is None
    with pytest.raises(FileNotFoundError):
        store.get_log_file("00000000000000000009.json")
    sink = io.BytesIO()
    assert store.read_log_file_into("00000000000000000000.json", sink) == 5 and sink.getvalue() == b"zero\n"


def test_last_checkpoint_moves_only_from_what_was_read(stores):
    store = stores[0]
    assert store.get_last_checkpoint() is None
    assert store.put_last_checkpoint(b'{"version":1}', replace_etag=None) is True
    assert store.put_last_checkpoint(b'{"version":9}', replace_etag=None) is False
    first = store.get_last_checkpoint()
    assert first.data == b'{"version":1}'
    assert store.put_last_checkpoint(b'{"version":2}', replace_etag=first.etag) is True
    assert store.put_last_checkpoint(b'{"version":3}', replace_etag=first.etag) is False  # changed since read
    second = store.get_last_checkpoint()
    assert second.data == b'{"version":2}'
    assert store.delete_last_checkpoint(first.etag) is False  # not the one read
    assert store.get_last_checkpoint().data == b'{"version":2}'
    assert store.delete_last_checkpoint(second.etag) is True and store.get_last_checkpoint() is None


def test_files_put_read_digest_list_and_delete(stores):
    store = stores[0]
    assert store.file_size("a/x.parquet") is None and store.first_file() is None
    assert store.put_file("a/x.parquet", b"xyz") is True
    assert store.put_file("a/x.parquet", b"other") is False and store.get_file("a/x.parquet") == b"xyz"
    assert store.put_file("a/x.parquet", b"other!", overwrite=True) is True
    assert store.put_file("b/y.parquet", b"y") is True
    assert (store.file_size("a/x.parquet"), store.get_file("a/x.parquet")) == (6, b"other!")
    assert b"".join(store.iter_file("a/x.parquet")) == b"other!"
    assert store.digest("a/x.parquet") == (6, hashlib.md5(b"other!").hexdigest())
    with pytest.raises(DataFileMissing):
        store.digest("a/missing.parquet")
    with pytest.raises(FileNotFoundError):
        store.get_file("a/missing.parquet")
    assert [f.name for f in store.list_files()] == ["a/x.parquet", "b/y.parquet"]
    assert [f.name for f in store.list_files("b/")] == ["b/y.parquet"]
    assert store.first_file().name == "a/x.parquet" and store.first_file("b").name == "b/y.parquet"
    assert store.list_subfolders() == ["a", "b"]
    child = store.child("a")
    assert (child.root, [f.name for f in child.list_files()]) == ("delta/t/a", ["x.parquet"])
    assert store.delete_files(["a/x.parquet", "a/never.parquet"]) == 1
    assert [f.name for f in store.list_files()] == ["b/y.parquet"]


def test_copies_never_overwrite_and_refuse_a_different_file(stores):
    here, there, _, _ = stores
    here.put_file("p/data.parquet", b"0123456789")
    here.create_log_file("00000000000000000000.checkpoint.parquet", b"checkpoint")
    assert there.copy_file_from(here, "p/data.parquet", expected_size=10) == 10
    assert there.copy_file_from(here, "p/data.parquet", expected_size=10) == 0  # present: nothing copied
    assert there.get_file("p/data.parquet") == b"0123456789"
    assert there.copy_log_file_from(here, "00000000000000000000.checkpoint.parquet") == 10
    assert there.get_log_file("00000000000000000000.checkpoint.parquet") == b"checkpoint"
    there.put_file("p/other.parquet", b"short")
    here.put_file("p/other.parquet", b"much longer")
    with pytest.raises(ReplicaDiverged):
        there.copy_file_from(here, "p/other.parquet", expected_size=11)
    assert there.get_file("p/other.parquet") == b"short"
    with pytest.raises(DataFileMissing):
        there.copy_file_from(here, "p/missing.parquet", expected_size=3)


def test_a_copy_source_url_reads_one_file_only(stores):
    here = stores[0]
    here.put_file("p/data.parquet", b"secret rows")
    url = here.signed_read_url("p/data.parquet", size=11)
    assert sas_permissions(url) == ("r", "b")  # read-only, one blob
    with urlopen(url) as response:  # noqa: S310 - loopback Azurite
        assert response.read() == b"secret rows"


def test_folders_of_a_location_and_the_container(stores):
    _, _, factory, here = stores
    quarantine = factory.folder(here, "_quarantine/delta/t/epoch-1", label="here-quarantine")
    quarantine.ensure_container()
    quarantine.ensure_container()  # idempotent
    assert quarantine.put_file("quarantine.json", b"{}") is True
    assert factory.folder(here, "_quarantine/delta/t", label="q").list_subfolders() == ["epoch-1"]
    assert factory.table(here).list_files() == []  # another folder: nothing under the table root


class _Capture(BaseHTTPRequestHandler):
    """An account that answers `status` to everything (a PUT: `put_status`, 201 when None and `status` is
    404) and records each request's method and headers."""

    status = 404
    put_status = None
    seen: list

    def _reply(self):
        self.seen.append((self.command, dict(self.headers)))
        if self.command == "PUT" and self.put_status is not None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(self.put_status)
            self.send_header("x-ms-error-code", {412: "ConditionNotMet", 409: "BlobAlreadyExists"}.get(
                self.put_status, "Other"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.command == "PUT" and self.status == 404:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(201)
            self.send_header("ETag", '"0x1"')
            self.send_header("Last-Modified", "Sun, 06 Dec 2026 00:00:00 GMT")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(self.status)
        self.send_header("x-ms-error-code", {404: "BlobNotFound", 503: "ServerBusy",
                                             403: "AuthorizationPermissionMismatch"}.get(self.status, "Other"))
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_HEAD = _reply

    def log_message(self, *args):
        pass


def answering(status: int, put_status: int | None = None):
    """Run the test once per implementation against a fake account answering `status` (PUT: `put_status`)."""
    answer = (status,) if put_status is None else (status, put_status)
    return pytest.mark.parametrize("fake_account", [(i, *answer) for i in IMPLEMENTATIONS], indirect=True,
                                   ids=IMPLEMENTATIONS)


@pytest.fixture
def fake_account(request):
    """(a store of `implementation` on a local HTTP server answering `status`, the requests it saw)."""
    implementation, status, *put_status = request.param
    seen: list = []
    answer = {"status": status, "seen": seen, "put_status": put_status[0] if put_status else None}
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Answer", (_Capture,), answer))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    environ = {"EASTUS_STORAGE": f"DefaultEndpointsProtocol=http;AccountName=eastus;AccountKey={account_key('eastus')};"
                                 f"BlobEndpoint=http://127.0.0.1:{server.server_port}/eastus;"}
    settings = {"EASTUS_STORAGE": resolve_connection("EASTUS_STORAGE", environ)}
    clients = {"EASTUS_STORAGE": build_blob_service_client(settings["EASTUS_STORAGE"])}
    factory = Stores(clients, ObjectClients(settings) if implementation == "obstore" else None)
    here = SimpleNamespace(name="here", connection="EASTUS_STORAGE", container="lake", path="delta/t")
    try:
        yield factory.table(here), seen
    finally:
        server.shutdown()
        server.server_close()
        clients["EASTUS_STORAGE"].close()


@answering(404)
def test_every_request_carries_the_replicators_client_request_id(fake_account):
    """The Event Grid subscriptions drop events of writes whose clientRequestId has this prefix."""
    store, seen = fake_account
    assert store.log_entry(f"{0:020d}.json") is None and store.file_size("p/x.parquet") is None
    with pytest.raises(FileNotFoundError):
        store.get_log_file(f"{0:020d}.json")
    assert len(seen) == 3  # one request each (a commit's entry may be a GET: its bytes give the MD5)
    ids = [{k.lower(): v for k, v in h.items()}.get(CLIENT_REQUEST_ID_HEADER, "") for _, h in seen]
    assert [i.startswith(CLIENT_REQUEST_ID_PREFIX) for i in ids] == [True, True, True]
    assert all(account_key("eastus") not in str(h) for _, h in seen)


@answering(404)
def test_a_create_is_conditional_on_the_wire(fake_account):
    """A commit or a marker is created with If-None-Match: * (the store never overwrites one)."""
    store, seen = fake_account
    assert store.create_log_file(f"{0:020d}.json", b"{}\n") is True
    assert store.put_file("p/marker.json", b"{}") is True
    puts = [{k.lower(): v for k, v in h.items()} for m, h in seen if m == "PUT"]
    assert [p.get("if-none-match") for p in puts] == ["*", "*"]


@answering(503)
def test_a_busy_account_is_retryable_and_the_error_names_no_secret_and_no_url(fake_account):
    store, seen = fake_account
    with pytest.raises(ReplicaUnreachable) as info:
        store.log_entry(f"{0:020d}.json")
    message = str(info.value)
    assert info.value.retryable and "EASTUS_STORAGE" in message and "it will be retried" in message
    assert "sig=" not in message and account_key("eastus") not in message and "127.0.0.1" not in message
    assert info.value.__cause__ is None or "sig=" not in str(info.value.__cause__)
    if type(store).__name__ == "ObjectTableStore":  # object_store's text names the URL: never carried along
        assert (info.value.__cause__, info.value.__context__) == (None, None)
    assert len(seen) == 3  # the first attempt and two retries


@answering(403)
def test_a_refused_request_is_access_denied_naming_the_connection_and_the_role(fake_account):
    store, seen = fake_account
    with pytest.raises(AccessDenied) as info:
        store.log_entry(f"{0:020d}.json")
    message = str(info.value)
    assert "HTTP 403" in message and "connection EASTUS_STORAGE" in message and "Storage Blob Data Reader" in message
    assert not info.value.retryable and len(seen) == 1  # not retried: waiting cannot grant a role


@answering(404, 412)
def test_a_create_refused_by_its_condition_reports_the_file_present(fake_account):
    store, seen = fake_account
    assert store.create_log_file(f"{0:020d}.json", b"{}\n") is False
    assert [m for m, _ in seen] == ["PUT"]


@answering(404)
def test_a_create_near_the_deadline_is_conditional_on_the_wire_too(fake_account):
    """Near the deadline obstore's calls run on its event loop, bounded by it: the same request."""
    store, seen = fake_account
    with deadline.within(30.0, "replicate_commit for sales"):
        assert store.create_log_file(f"{0:020d}.json", b"{}\n") is True
        assert store.log_entry(f"{1:020d}.json") is None
    assert [(m, {k.lower(): v for k, v in h.items()}.get("if-none-match")) for m, h in seen] == \
        [("PUT", "*"), ("GET" if type(store).__name__ == "ObjectTableStore" else "HEAD", None)]


@answering(404)
def test_nothing_is_sent_once_the_invocations_deadline_has_passed(fake_account):
    store, seen = fake_account
    with deadline.within(0.0, "replicate_commit for sales"):
        with pytest.raises(DeadlineExceeded):
            store.create_log_file(f"{0:020d}.json", b"{}\n")
        with pytest.raises(DeadlineExceeded):
            store.log_entry(f"{0:020d}.json")
    assert seen == []


def test_a_file_above_one_block_streams_and_copies_whole(stores):
    here, there, _, _ = stores
    data = bytes(range(256)) * (9 * 4096)  # 9 MiB: two blocks
    here.put_file("p/big.parquet", data)
    chunks = list(here.iter_file("p/big.parquet"))
    assert len(chunks) == 2 and b"".join(chunks) == data
    assert there.copy_file_from(here, "p/big.parquet") == len(data)
    assert there.digest("p/big.parquet") == (len(data), hashlib.md5(data).hexdigest())
    assert there.copy_file_from(here, "p/big.parquet") == 0


def test_obstore_gets_a_container_sas_that_cannot_list_or_delete_and_is_renewed_before_it_expires():
    """An account key never reaches object_store: it gets read, create and write on one container."""
    from datetime import datetime, timedelta, timezone

    from shared.storage.object_client import _KeySas

    credential = _KeySas("eastus", account_key("eastus"), "lake")()
    assert sas_permissions("http://127.0.0.1/eastus/lake?" + credential["sas_token"]) == ("rcw", "c")
    assert account_key("eastus") not in credential["sas_token"]
    left = credential["expires_at"] - datetime.now(timezone.utc)  # when obstore asks for a new one
    assert timedelta(minutes=49) < left <= timedelta(minutes=50)  # valid 60 minutes, renewed 10 early


def test_names_with_characters_urls_escape_are_the_same_files(stores):
    """Partition folders hold '%', spaces, '?', '#', '~', '[', '*' (Delta paths are URL-encoded in the log,
    the blob names are not): every operation names the same blob."""
    here, there, _, _ = stores
    names = ["region=50% off/a.parquet", "ts=2024-01-01 00%3A00%3A00/b.parquet", "q=a?b#c/c.parquet",
             "k=[1]~*+/d.parquet"]
    for i, name in enumerate(names):
        assert here.put_file(name, b"x" * (i + 1)) is True
    assert [f.name for f in here.list_files()] == sorted(names)
    for i, name in enumerate(names):
        assert (here.file_size(name), here.get_file(name)) == (i + 1, b"x" * (i + 1))
        assert there.copy_file_from(here, name, expected_size=i + 1) == i + 1
        assert there.digest(name) == (i + 1, hashlib.md5(b"x" * (i + 1)).hexdigest())


def test_a_commit_above_one_mib_is_listed_by_its_size_without_being_read_whole(stores):
    store = stores[0]
    big = b'{"commitInfo":{"pad":"' + b"p" * (1024 * 1024) + b'"}}\n'
    assert store.create_log_file(f"{0:020d}.json", big) is True
    entry = store.log_entry(f"{0:020d}.json")
    # obstore: a GET whose body above 1 MiB is not read (no MD5: a comparison reads the bytes);
    # the SDK: a HEAD with the service's Content-MD5.
    md5 = None if type(store).__name__ == "ObjectTableStore" else hashlib.md5(big).digest()
    assert (entry.size, entry.content_md5) == (len(big), md5)
    assert store.get_log_file(f"{0:020d}.json") == big
