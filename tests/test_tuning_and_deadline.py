"""Tuning in one object passed down, and a deadline per invocation reaching every storage request
(issue 24): REPLICATION_TUNING is validated with errors that name the field; a replica whose
endpoint black-holes stops at the invocation's deadline, in the pool thread that talks to it,
while the other replica is replicated."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from shared.config.parse import parse_config
from shared.config.tuning import Tuning, parse_tuning
from shared.errors import ConfigError, DeadlineExceeded
from shared.replication.outcome import ReplicaState
from shared.runtime import ReplicationRuntime
from tests.support.endpoint_fault import EndpointFault
from tests.support.lake import Lake, batch


def test_tuning_defaults_and_overrides():
    assert parse_tuning(None) == Tuning() == parse_tuning("")
    assert (Tuning().batch_versions, Tuning().file_copy_workers, Tuning().invocation_seconds) == (64, 32, 540.0)
    tuned = parse_tuning(json.dumps({"batch_versions": 8, "invocation_seconds": 12.5, "backfill_step_versions": 0}))
    assert (tuned.batch_versions, tuned.invocation_seconds, tuned.backfill_step_versions, tuned.task_workers) == \
        (8, 12.5, 0, 32)


@pytest.mark.parametrize("text, message", [
    ("{", r"REPLICATION_TUNING is not valid JSON"),
    ("[1]", r"REPLICATION_TUNING must be a JSON object of tuning names, got list"),
    ('{"batch_size": 3}', r"REPLICATION_TUNING\.batch_size: unknown tuning name; expected one of file_copy_workers"),
    ('{"batch_versions": 2.5}', r"REPLICATION_TUNING\.batch_versions: expected a whole number, got 2\.5"),
    ('{"file_copy_workers": true}', r"REPLICATION_TUNING\.file_copy_workers: expected a whole number, got True"),
    ('{"invocation_seconds": "60"}', r"REPLICATION_TUNING\.invocation_seconds: expected a number, got '60'"),
    ('{"task_workers": 0}', r"REPLICATION_TUNING\.task_workers: must be at least 1, got 0"),
    ('{"invocation_seconds": NaN}', r"REPLICATION_TUNING\.invocation_seconds: must be a finite number, got nan"),
    ('{"invocation_seconds": Infinity}', r"REPLICATION_TUNING\.invocation_seconds: must be a finite number, got inf"),
])
def test_bad_tuning_is_refused_with_the_field(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_tuning(text)


def test_a_runtime_refuses_bad_tuning_before_building_anything(azurite, request):
    lake = Lake(azurite, request.node.name)
    try:
        with pytest.raises(ConfigError, match=r"REPLICATION_TUNING\.batch_versions: must be at least 1"):
            ReplicationRuntime(parse_config(lake.config_doc),
                               {**lake.environ, "REPLICATION_TUNING": '{"batch_versions": 0}'})
    finally:
        lake.close()


def test_the_invocation_deadline_stops_a_black_holed_replica_in_its_pool_thread(azurite, request):
    """westeu's blob endpoint accepts connections and never answers. Its client would wait 120 s
    per attempt, three attempts; the invocation's 3 s deadline (tuning) caps each attempt and
    stops the retries, in the replica task's pool thread, which carries the invocation's context."""
    fault = EndpointFault(azurite.port)
    lake = Lake(azurite, request.node.name)
    try:
        lake.environ["WESTEU_STORAGE"] = re.sub(r"BlobEndpoint=http://127\.0\.0\.1:\d+/",
                                                f"BlobEndpoint=http://127.0.0.1:{fault.port}/",
                                                lake.environ["WESTEU_STORAGE"])
        lake.environ["REPLICATION_TUNING"] = json.dumps({"invocation_seconds": 3})
        lake.write(batch(0, 5), mode="overwrite")
        lake.write(batch(5, 5))
        runtime = lake.runtime
        fault.black_hole()
        box: dict = {}

        def invocation() -> None:
            with runtime.invocation("replicate_commit"):
                box["outcomes"] = {o.replica: o for o in runtime.replicators["sales"].replicate(None)}

        started = time.monotonic()
        thread = threading.Thread(target=invocation, daemon=True)
        thread.start()
        thread.join(timeout=60)
        elapsed = time.monotonic() - started
        assert not thread.is_alive(), f"the invocation outlived its 3 s deadline by far ({elapsed:.0f} s)"
        outcomes = box["outcomes"]
        assert elapsed < 3 + 5, elapsed
        assert (outcomes["seasia"].state, outcomes["seasia"].head_after) == (ReplicaState.REPLICATED, 1)
        westeu = outcomes["westeu"]
        assert (westeu.state, type(westeu.error), westeu.error.retryable) == \
            (ReplicaState.ERROR, DeadlineExceeded, True), westeu.error
        assert str(westeu.error).startswith("replicate_commit: its deadline passed before ")
        assert "AccountKey" not in str(westeu.error) and "sig=" not in str(westeu.error)
        assert lake.log_names("westeu") == []  # nothing written there
    finally:
        lake.close()
        fault.close()


def test_a_catch_up_of_many_batches_reads_each_next_batch_ahead_and_writes_every_version_in_order(azurite, request):
    """batch_versions 3 over ten versions: four batches, each next one read on its own thread while the
    current one is written (catch_up._Ahead); every version arrives, byte-identical, and a batch whose
    read fails (a commit missing on the primary) stops the replica below it, with that error."""
    lake = Lake(azurite, request.node.name)
    try:
        lake.environ["REPLICATION_TUNING"] = json.dumps({"batch_versions": 3})
        lake.write(batch(0, 5), mode="overwrite")
        for i in range(1, 10):
            lake.write(batch(5 * i, 5))
        outcomes = {o.replica: o for o in lake.runtime.replicators["sales"].replicate(None)}
        assert {r: (o.state, o.head_after, o.error) for r, o in outcomes.items()} == \
            {r: (ReplicaState.REPLICATED, 9, None) for r in ("westeu", "seasia")}
        lake.assert_replicas_equal()
        # Versions 10..16, with 13's commit gone from the primary: the batch reading it fails.
        for i in range(10, 17):
            lake.write(batch(5 * i, 5))
        lake.clients["eastus"].get_blob_client(lake.container, f"{lake.table_path}/_delta_log/{13:020d}.json") \
            .delete_blob()
        outcomes = {o.replica: o for o in lake.runtime.replicators["sales"].replicate(None)}
        assert all("version 13 has no commit on the primary" in str(o.error) for o in outcomes.values()), \
            {r: o.error for r, o in outcomes.items()}
        assert [lake.head(a) for a in ("westeu", "seasia")] == [12, 12]  # every version below it, none above
    finally:
        lake.close()
