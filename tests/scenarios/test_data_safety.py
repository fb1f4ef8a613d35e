"""Outside the retention path, replication never deletes a replica blob or overwrites one unconditionally."""

from __future__ import annotations

import random
import threading
from urllib.parse import parse_qs, unquote, urlparse

from shared.config.parse import parse_config
from shared.app.commit_event import handle_storage_event
from shared.runtime import ReplicationRuntime
from tests.support.lake import batch, build_rich_table


class RequestAudit:
    """Records every request the clients send: (method, account, blob path, query, headers)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple] = []

    def __call__(self, request) -> None:
        http = request.http_request
        url = urlparse(http.url)
        account, _, path = unquote(url.path).lstrip("/").partition("/")
        with self.lock:
            self.requests.append((http.method, account, path, parse_qs(url.query), dict(http.headers)))


def unconditional_writes(audit: RequestAudit) -> list[tuple]:
    bad = []
    for method, account, path, query, headers in audit.requests:
        if account == "eastus" and method in ("PUT", "DELETE"):
            bad.append(("write to the primary", method, path))
            continue
        if account == "eastus":
            continue
        comp, restype = query.get("comp", [""])[0], query.get("restype", [""])[0]
        if method == "DELETE":
            bad.append(("delete", path))
        elif method == "PUT":
            if restype == "container" or comp in ("lease", "block"):
                continue  # container creation, our lease, uncommitted blocks
            if headers.get("If-None-Match") == "*":
                continue  # conditional create
            if path.endswith("/_delta_log/_last_checkpoint") and headers.get("If-Match"):
                continue  # forward-only, ETag-conditional
            bad.append(("unconditional put", path, comp))
    return bad


def test_replication_writes_replicas_only_by_conditional_create(lake):
    build_rich_table(lake, appends=6)
    audit = RequestAudit()
    runtime = ReplicationRuntime(parse_config(lake.config_doc), lake.environ, counter=audit)
    try:
        events = lake.events()
        deliveries = events * 2
        random.Random(1).shuffle(deliveries)
        for event in deliveries:
            handle_storage_event(runtime, event)
        runtime.replicators["sales"].replicate(None)
    finally:
        runtime.close()
    lake.assert_replicas_equal(every_version=False)
    puts = [r for r in audit.requests if r[0] == "PUT" and r[1] != "eastus"]
    assert len(puts) > 50  # the audit saw the replication happen
    assert unconditional_writes(audit) == []


def test_diverged_replica_files_stay_byte_for_byte_untouched(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.deliver_all(lake.events())
    foreign = b'{"commitInfo":{"timestamp":2,"operation":"FOREIGN"}}\n'
    lake.clients["westeu"].get_blob_client(lake.container, f"{lake.table_path}/_delta_log/{1:020d}.json").upload_blob(foreign)
    before = {name: lake.clients["westeu"].get_blob_client(lake.container, name).download_blob().readall()
              for name in lake.blobs("westeu")}
    for i in range(1, 6):
        lake.write(batch(i * 5, 5), partition_by=["region"])
    audit = RequestAudit()
    runtime = ReplicationRuntime(parse_config(lake.config_doc), lake.environ, counter=audit)
    try:
        for event in lake.events() * 2:
            handle_storage_event(runtime, event)
        runtime.replicators["sales"].replicate(None)
    finally:
        runtime.close()
    after = {name: lake.clients["westeu"].get_blob_client(lake.container, name).download_blob().readall()
             for name in lake.blobs("westeu") if not name.endswith("_replication/lease")}
    kept = {k: v for k, v in before.items() if not k.endswith("_replication/lease")}
    assert {k: after.get(k) for k in kept} == kept  # every blob it had, byte for byte
    # The hot path copies a commit's files while the head is checked: an event may leave that
    # commit's data files (the primary's bytes, unreferenced, invisible to readers), nothing else.
    added = {k: v for k, v in after.items() if k not in kept}
    assert all("/_delta_log/" not in k and v == lake.clients["eastus"].get_blob_client(lake.container, k)
               .download_blob().readall() for k, v in added.items())
    writes = [r for r in audit.requests if r[1] == "westeu" and r[0] in ("PUT", "DELETE")
              and r[3].get("comp", [""])[0] != "lease"]
    assert not [r for r in writes if r[0] == "DELETE" or r[4].get("If-None-Match") != "*"]
    # Into the log, only conditional creates of the foreign version itself were tried (an event
    # for version 1 finds 0 and tries the create that reveals the divergence; it was refused:
    # the bytes above are unchanged). Later versions are refused by the head check, unwritten.
    assert {r[2].rsplit("/", 1)[1] for r in writes if "/_delta_log/" in r[2]} == {f"{1:020d}.json"}
    assert lake.head("seasia") == lake.head("eastus")
