"""The hot path (one commit): the commit's files are copied while the replica's head is looked up,
and only the conditional commit write waits for the checks."""

from __future__ import annotations

import threading

from shared.config.parse import parse_config
from shared.replication.outcome import ReplicaState
from shared.runtime import ReplicationRuntime
from tests.support.lake import Lake, batch, rows

LOG = "/_delta_log/"


class GatedRequests:
    """A raw_request_hook recording (method, url) of every request; the replica's request for commit
    N-1 (the head lookup) is held until a data-file PUT to that replica has been sent."""

    def __init__(self, replica_prefix: str, held_commit: str) -> None:
        self._lock = threading.Lock()
        self.replica_prefix, self.held_commit = replica_prefix, held_commit
        self.requests: list[tuple[str, str]] = []
        self.file_put = threading.Event()
        self.armed = False
        self.put_seen_while_held: bool | None = None

    def __call__(self, request) -> None:
        http = request.http_request
        url = http.url.split("?")[0]
        with self._lock:
            self.requests.append((http.method, url))
        if not self.armed or not url.startswith(self.replica_prefix):
            return
        if http.method == "PUT" and LOG not in url:
            self.file_put.set()
        # The head lookup: a HEAD of commit N-1 (through obstore a GET: its bytes give the MD5).
        if http.method in ("HEAD", "GET") and url.endswith(LOG + self.held_commit):
            # A sequential implementation never sends the PUT while this waits: it times out.
            self.put_seen_while_held = self.file_put.wait(timeout=30)

    def on_replica(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(m, u[len(self.replica_prefix):]) for m, u in self.requests if u.startswith(self.replica_prefix)]


def test_file_copies_start_before_the_replica_head_lookup_finishes(azurite, request):
    lake = Lake(azurite, request.node.name)
    prefix = f"{azurite.endpoint('westeu')}/{lake.container}/{lake.table_path}"
    recorder = GatedRequests(prefix, f"{0:020d}.json")
    try:
        lake.write(batch(0, 5), mode="overwrite")
        lake.deliver_all(lake.events())
        assert lake.head("westeu") == 0
        # Another process (or a restart) handles the next commit: it never wrote version 0 there, so it
        # looks the replica's head up (test_a_commit_after_one_this_process_wrote_is_not_looked_up: none).
        lake.close_runtime()
        lake._runtime = ReplicationRuntime(parse_config(lake.config_doc), lake.environ, counter=recorder)
        lake.write(batch(100, 5))
        (event,) = [e for e in lake.events() if e["subject"].endswith(f"{1:020d}.json")]
        recorder.requests.clear()
        recorder.armed = True
        result = lake.deliver(event)
        assert [(o.replica, o.state, o.error) for o in result.outcomes] == [
            ("westeu", ReplicaState.REPLICATED, None), ("seasia", ReplicaState.REPLICATED, None)]
        assert recorder.put_seen_while_held is True
        on_replica = recorder.on_replica()
        probe = "GET" if lake.runtime.storage_client == "obstore" else "HEAD"
        head_lookup = on_replica.index((probe, f"/_delta_log/{0:020d}.json"))
        file_puts = [i for i, (m, u) in enumerate(on_replica) if m == "PUT" and LOG not in u]
        commit_put = on_replica.index(("PUT", f"/_delta_log/{1:020d}.json"))
        assert len(file_puts) == 1  # one appended file, copied once
        # The HEAD was sent first and held until the file's PUT went out (put_seen_while_held);
        # the commit came only after both.
        assert head_lookup < file_puts[0] < commit_put
        assert rows(lake.table("westeu", 1).to_pyarrow_table()) == rows(lake.table("eastus", 1).to_pyarrow_table())
    finally:
        lake.close()


def test_a_commit_after_one_this_process_wrote_is_not_looked_up(azurite, request):
    """The steady state: the previous commit was written to the replica by this process at this epoch,
    so the next one sends the replica its file and its commit, nothing else; once the trust runs out,
    the replica's head is read again (a new epoch: test_fence.py)."""
    from shared.delta import commit_digests

    lake = Lake(azurite, request.node.name)
    prefix = f"{azurite.endpoint('westeu')}/{lake.container}/{lake.table_path}"
    recorder = GatedRequests(prefix, "none")
    lake._runtime = ReplicationRuntime(parse_config(lake.config_doc), lake.environ, counter=recorder)
    probe = "GET" if lake.runtime.storage_client == "obstore" else "HEAD"

    def next_commit(n: int) -> list[tuple[str, str]]:
        lake.write(batch(100 * n, 5))
        (event,) = [e for e in lake.events() if e["subject"].endswith(f"{n:020d}.json")]
        recorder.requests.clear()
        result = lake.deliver(event)
        assert [(o.replica, o.state, o.error, o.head_after) for o in result.outcomes] == [
            ("westeu", ReplicaState.REPLICATED, None, n), ("seasia", ReplicaState.REPLICATED, None, n)]
        return [(m, "file" if LOG not in u else u.rsplit("/", 1)[1]) for m, u in recorder.on_replica()]

    try:
        lake.write(batch(0, 5), mode="overwrite")
        lake.deliver_all(lake.events())
        assert next_commit(1) == [("PUT", "file"), ("PUT", f"{1:020d}.json")]
        assert next_commit(2) == [("PUT", "file"), ("PUT", f"{2:020d}.json")]
        # Trust runs out (as after 30 s without a commit): the replica's head is read again.
        trusted = commit_digests.TRUST_SECONDS
        for written in lake.runtime.replicators["sales"]._written.values():
            written.trust_seconds = 0.0
        try:
            assert sorted(next_commit(3)) == sorted([(probe, f"{2:020d}.json"), ("PUT", "file"),
                                                     ("PUT", f"{3:020d}.json")])
        finally:
            for written in lake.runtime.replicators["sales"]._written.values():
                written.trust_seconds = trusted
        assert next_commit(4) == [("PUT", "file"), ("PUT", f"{4:020d}.json")]
        assert rows(lake.table("westeu", 4).to_pyarrow_table()) == rows(lake.table("eastus", 4).to_pyarrow_table())
    finally:
        lake.close()


def test_a_replica_already_at_the_version_costs_at_most_the_commits_files(azurite, request):
    """A duplicate event: the early copies find the files there, nothing is rewritten."""
    lake = Lake(azurite, request.node.name)
    try:
        lake.write(batch(0, 5), mode="overwrite")
        lake.write(batch(100, 5))
        events = lake.events()
        lake.deliver_all(events)
        before = lake.blobs("westeu")
        (result,) = lake.deliver_all(events[-1:])
        assert [(o.state, o.error, o.files, o.bytes) for o in result.outcomes] == [
            (ReplicaState.UP_TO_DATE, None, 0, 0)] * 2
        assert lake.blobs("westeu") == before  # same names, sizes and etags: nothing rewritten
    finally:
        lake.close()


def test_a_probing_copy_of_a_file_the_replica_has_costs_one_head(lake):
    """probe=True (history whose files a seed copied): one HEAD answers, nothing is read or sent."""
    import json

    from tests.scenarios.test_data_safety import RequestAudit

    lake.write(batch(0, 5), mode="overwrite")
    lake.deliver_all(lake.events())
    commit = lake.clients["eastus"].get_container_client(lake.container).download_blob(
        f"{lake.table_path}/_delta_log/{0:020d}.json").readall().decode()
    (add,) = [json.loads(line)["add"] for line in commit.splitlines() if '"add"' in line]
    audit = RequestAudit()
    runtime = ReplicationRuntime(parse_config(lake.config_doc), lake.environ, counter=audit)
    try:
        replicator = runtime.replicators["sales"]
        copied = replicator.replicas["westeu"].copy_file_from(replicator.source_store, add["path"],
                                                             expected_size=add["size"], bulk=True, probe=True)
    finally:
        runtime.close()
    assert copied == 0  # present: nothing copied
    assert [(method, account) for method, account, *_ in audit.requests] == [("HEAD", "westeu")]
