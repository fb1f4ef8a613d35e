"""Hardening: bounded memory in catch-up, every replica gets an outcome whatever is raised, log
files appear on replicas only complete, and copy sources are read-only single-blob credentials."""

from __future__ import annotations

import json
import logging
import threading
import tracemalloc
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlparse

import pyarrow as pa
import pytest
from azure.core.exceptions import ResourceModifiedError
from azure.storage.blob import (
    AccountSasPermissions,
    ResourceTypes,
    generate_account_sas,
)
from deltalake import CommitProperties, write_deltalake

from devtools.azurite import account_key
from shared import failpoints
from shared.errors import UnexpectedFailure
from shared.replication.outcome import ReplicaState
from shared.storage.blob_table_store import sas_lifetime
from tests.support.lake import Lake, batch

MiB = 1024 * 1024


class RequestLog:
    """Records (method, url without query, copy source without query) of every request sent.

    Passed as the runtime's request counter, so it sees exactly what the clients send."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str, str | None]] = []
        self.copy_sources: list[str] = []

    def __call__(self, request) -> None:
        http = request.http_request
        source = http.headers.get("x-ms-copy-source")
        with self._lock:
            self.requests.append((http.method, http.url.split("?")[0], source.split("?")[0] if source else None))
            if source:
                self.copy_sources.append(source)


# -- memory -------------------------------------------------------------------------------

def test_catch_up_of_500_versions_with_1_mib_commits_stays_under_64_mib(azurite, request):
    """Peak Python allocation above baseline while a replica catches up 500 versions of 1 MiB
    commits: bounded by batches (2 x 8 MiB) and the commit cache (16 MiB), not by the lag."""
    lake = Lake(azurite, request.node.name, table_overrides={"replicas": [
        {"name": "westeu", "connection": "WESTEU_STORAGE", "container": "placeholder", "path": "delta/sales"}]})
    lake.config_doc["tables"][0]["replicas"][0]["container"] = lake.container
    try:
        data = pa.table({"id": pa.array([1], pa.int64())})
        write_deltalake(lake.uri(), data, mode="overwrite", storage_options=lake.options("eastus"))
        pad = "x" * MiB  # commitInfo carries it: a 1 MiB commit written by deltalake
        write_deltalake(lake.uri(), data, mode="append", storage_options=lake.options("eastus"),
                        commit_properties=CommitProperties(custom_metadata={"pad": pad}))
        template = lake.blob_bytes("eastus", f"_delta_log/{1:020d}.json")
        assert len(template) > MiB
        log_prefix = f"{lake.table_path}/_delta_log/"
        container = lake.clients["eastus"].get_container_client(lake.container)
        for v in range(2, 500):  # the same valid commit again: same data file, new version
            container.upload_blob(f"{log_prefix}{v:020d}.json", template)
        replicator = lake.runtime.replicators["sales"]
        tracemalloc.start()
        baseline = tracemalloc.get_traced_memory()[0]
        (outcome,) = replicator.replicate(None)
        peak = tracemalloc.get_traced_memory()[1] - baseline
        tracemalloc.stop()
        print(f"catch-up of 500 x {len(template) / MiB:.2f} MiB commits: peak {peak / MiB:.1f} MiB above baseline")
        assert outcome.error is None and outcome.head_after == 499
        assert lake.head("westeu") == 499
        assert peak < 64 * MiB
    finally:
        lake.close()


# -- every replica gets an outcome ------------------------------------------------------------

def _build_with_checkpoint(lake: Lake) -> None:
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.write(batch(5, 5), partition_by=["region"])
    lake.table().create_checkpoint()
    lake.write(batch(10, 5), partition_by=["region"])


def _raise(err: BaseException):
    def action() -> None:
        raise err
    return action


INJECTIONS = [
    # (failpoint, exception, level)
    (failpoints.FILE_COPIED, FileNotFoundError("injected: file vanished"), "file"),
    (failpoints.CHECKPOINT_COPYING, pa.lib.ArrowInvalid("injected: corrupt checkpoint"), "checkpoint"),
    (failpoints.COMMIT_BEFORE, ResourceModifiedError("injected: condition not met"), "storage-mapper"),
]


@pytest.mark.parametrize("failpoint, error, level", INJECTIONS, ids=[i[2] for i in INJECTIONS])
def test_unexpected_exception_on_one_replica_leaves_the_other_replicated(lake, failpoint, error, level, caplog):
    _build_with_checkpoint(lake)
    last = lake.events()[-1]  # one event: both replicas catch up from empty, checkpoint included
    failpoints.arm(failpoint, after=1, action=_raise(error), where={"replica": "seasia"})
    caplog.set_level(logging.WARNING)
    try:
        result = lake.deliver(last)
    finally:
        failpoints.disarm_all()
    by_replica = {o.replica: o for o in result.outcomes}
    assert sorted(by_replica) == ["seasia", "westeu"]
    assert by_replica["westeu"].state == ReplicaState.REPLICATED and by_replica["westeu"].error is None
    assert by_replica["westeu"].head_after == lake.head("eastus") == lake.head("westeu")
    failed = by_replica["seasia"]
    assert failed.state == ReplicaState.ERROR
    assert isinstance(failed.error, UnexpectedFailure) and failed.error.__cause__ is error and failed.retryable
    assert type(error).__name__ in str(failed.error)
    tracebacks = [r for r in caplog.records if r.getMessage().startswith("replica.failed table=sales replica=seasia")]
    assert len(tracebacks) == 1 and tracebacks[0].exc_info is not None
    # The redelivery converges the failed replica too.
    lake.deliver(last)
    lake.assert_replicas_equal(every_version=True)


def test_replicate_commit_raises_on_an_unexpected_failure_so_event_grid_retries(lake, monkeypatch):
    from functions.replicate_commit import replicate_commit
    from shared import runtime as runtime_module
    from tests.test_functions_replicate_commit import as_trigger_event

    monkeypatch.setenv("REPLICATION_CONFIG", json.dumps(lake.config_doc))
    for name, value in lake.environ.items():
        monkeypatch.setenv(name, value)
    runtime_module.reset_runtime()
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        failpoints.arm(failpoints.COMMIT_BEFORE, after=1, action=_raise(KeyError("injected")),
                       where={"replica": "westeu"})
        with pytest.raises(UnexpectedFailure) as info:
            replicate_commit(as_trigger_event(lake.events()[-1]))
        assert isinstance(info.value.__cause__, KeyError)
        assert lake.head("seasia") == 0 and lake.head("westeu") is None
    finally:
        failpoints.disarm_all()
        runtime_module.reset_runtime()


# -- log files only complete ----------------------------------------------------------------

def test_log_files_reach_replicas_only_by_atomic_writes_and_listings_never_show_a_partial_checkpoint(azurite, request):
    recorder = RequestLog()
    lake = Lake(azurite, request.node.name)
    from shared.config.parse import parse_config
    from shared.runtime import ReplicationRuntime

    lake._runtime = ReplicationRuntime(parse_config(lake.config_doc), lake.environ, counter=recorder)
    try:
        lake.write(batch(0, 400), mode="overwrite", partition_by=["id"])  # a checkpoint of 400 files
        lake.table().create_checkpoint()
        for i in range(1, 4):
            lake.write(batch(1000 * i, 200), partition_by=["id"])
            lake.table().create_checkpoint()
        checkpoints = sorted(n for n in lake.log_names("eastus") if ".checkpoint." in n)
        assert len(checkpoints) == 4
        primary = {n: lake.blob_bytes("eastus", f"_delta_log/{n}") for n in checkpoints}
        seen: list[str] = []
        wrong: list[str] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                for name in lake.log_names("westeu"):
                    if ".checkpoint." in name:
                        seen.append(name)
                        if lake.blob_bytes("westeu", f"_delta_log/{name}") != primary[name]:
                            wrong.append(name)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            lake.deliver(lake.events()[-1])  # catch-up from empty: 4 checkpoints copied
        finally:
            stop.set()
            watcher.join()
        watch_once = [n for n in lake.log_names("westeu") if ".checkpoint." in n]
        assert sorted(watch_once) == checkpoints and wrong == []
        assert seen, "the watcher never saw a checkpoint"
        for name in checkpoints:
            assert lake.blob_bytes("westeu", f"_delta_log/{name}") == primary[name]
        # No asynchronous Copy Blob ever targeted a log file: each was one PUT or one block list.
        copies_into_log = [u for m, u, s in recorder.requests if s is not None and "/_delta_log/" in u]
        assert copies_into_log == []
        assert any(s is not None for _, _, s in recorder.requests)  # data files did use Copy Blob
    finally:
        lake.close()


# -- least privilege for copy sources --------------------------------------------------------

def test_a_sas_connection_string_is_never_sent_as_copy_source_and_streaming_is_said_once(azurite, request, caplog):
    lake = Lake(azurite, request.node.name)
    sas = generate_account_sas("eastus", account_key("eastus"), ResourceTypes(service=True, container=True,
                               object=True), AccountSasPermissions(read=True, write=True, delete=True, list=True),
                               expiry=datetime.now(timezone.utc) + timedelta(days=30))
    lake.environ["EASTUS_STORAGE"] = (f"BlobEndpoint={lake.azurite.endpoint('eastus')};"
                                      f"SharedAccessSignature={sas}")
    recorder = RequestLog()
    from shared.config.parse import parse_config
    from shared.runtime import ReplicationRuntime

    lake._runtime = ReplicationRuntime(parse_config(lake.config_doc), lake.environ, counter=recorder)
    caplog.set_level(logging.INFO)
    try:
        for i in range(3):
            lake.write(batch(i * 10, 10), mode="overwrite" if i == 0 else "append", partition_by=["region"])
        (result,) = lake.deliver_all(lake.events()[-1:])  # catch-up: the bulk path that uses Copy Blob
        assert [o.error for o in result.outcomes] == [None, None]
        lake.assert_replicas_equal(every_version=True)
        signature = parse_qs(sas)["sig"][0]
        assert recorder.copy_sources == []  # nothing was copied server-side from this source
        assert all(signature not in u for _, u, _ in recorder.requests)
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("copy.streaming")]
        assert sorted(said) == [
            "copy.streaming replica=seasia source_account=eastus reason=no read-only single-blob credential can "
            "be derived from a SAS connection string",
            "copy.streaming replica=westeu source_account=eastus reason=no read-only single-blob credential can "
            "be derived from a SAS connection string",
        ]
    finally:
        lake.close()


def test_copy_source_sas_lives_as_long_as_a_slow_copy_needs_and_no_longer():
    assert sas_lifetime(None) == timedelta(minutes=10)
    assert timedelta(minutes=10) <= sas_lifetime(1 * MiB) < timedelta(minutes=10, seconds=1)
    # 64 GiB at the assumed slowest rate (8 MiB/s) takes 8192 s; plus the 10-minute margin.
    assert sas_lifetime(64 * 1024 * MiB) == timedelta(seconds=8192, minutes=10)
    assert sas_lifetime(10 * 1024 * 1024 * MiB) == timedelta(hours=24)


def test_large_file_copy_source_is_read_only_one_blob_and_valid_for_the_copy(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    source = lake.runtime.replicators["sales"].source_store
    path = next(n for n in lake.blobs("eastus") if n.endswith(".parquet")).split(f"{lake.table_path}/", 1)[1]
    url = urlparse(source.signed_read_url(path, size=64 * 1024 * MiB))
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert (query["sp"], query["sr"]) == ("r", "b")
    expiry = datetime.fromisoformat(query["se"].replace("Z", "+00:00"))
    remaining = expiry - datetime.now(timezone.utc)
    assert timedelta(seconds=8192 + 540) < remaining <= timedelta(seconds=8192 + 605)
