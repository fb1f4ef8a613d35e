"""SIGKILL the replicator at every step boundary; redelivery converges and no reader sees a torn replica."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from deltalake import DeltaTable

from shared import failpoints
from tests.support.lake import Lake, batch, rows

REPO = Path(__file__).resolve().parents[2]


class ReplicaReader:
    """Polls a replica in a thread; records every version it read and every failure."""

    def __init__(self, lake: Lake, account: str, expected: dict[int, list]) -> None:
        self.lake, self.account, self.expected = lake, account, expected
        self.observations: list[int] = []
        self.not_yet_a_table = 0
        self.torn: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.observe_once()

    def observe_once(self) -> None:
        # Listed before reading: a replica with no commit and no checkpoint yet is simply
        # not a table yet (seeding); once it has one, every failure to read is torn.
        is_table = any(n.endswith(".json") and n[:20].isdigit() or ".checkpoint." in n
                       for n in self.lake.log_names(self.account))
        try:
            table = DeltaTable(self.lake.uri(), storage_options=self.lake.options(self.account))
            version = table.version()
            seen = rows(table.to_pyarrow_table())
        except Exception as err:  # noqa: BLE001 - classified below
            if is_table or self.observations:
                self.torn.append(f"{type(err).__name__}: {str(err)[:300]}")
            else:
                self.not_yet_a_table += 1
            return
        self.observations.append(version)
        if seen != self.expected.get(version):
            self.torn.append(f"version {version} rows differ from the primary's")

    def __enter__(self) -> "ReplicaReader":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_crashing_worker(lake: Lake, failpoint: str, after: int, event: dict) -> int:
    job = {"config": lake.config_doc, "environ": lake.environ, "failpoint": failpoint, "after": after, "event": event}
    proc = subprocess.run([sys.executable, "-m", "tests.support.crash_worker"], input=json.dumps(job), text=True,
                          cwd=REPO, capture_output=True, timeout=120)
    return proc.returncode


def build(lake: Lake) -> None:
    lake.write(batch(0, 10), mode="overwrite", partition_by=["region"])
    for i in range(1, 9):
        lake.write(batch(i * 10, 10), partition_by=["region"])  # five files per commit
        if i == 5:
            lake.table().delete("id % 4 = 0")
    lake.table().create_checkpoint()


SCENARIOS = [
    # (failpoint, hits before the kill, replica head before, seed from checkpoint?)
    (failpoints.FILE_COPIED, 2, 3, False),  # after 2 of 5 data files of a commit
    (failpoints.COMMIT_BEFORE, 1, 3, False),  # all data there, commit not written
    (failpoints.COMMIT_AFTER, 3, 3, False),  # in the middle of a multi-version catch-up
    (failpoints.COMMIT_AFTER, 6, 3, False),  # after the last commit, before its checkpoint
    (failpoints.CHECKPOINT_COPIED, 1, 3, False),  # checkpoint copied, _last_checkpoint not
    (failpoints.SEED_FILE, 4, None, True),  # in the middle of seeding an empty replica
]


@pytest.mark.parametrize("failpoint, after, replica_head, seed", SCENARIOS,
                         ids=[f"{s[0]}-{s[1]}" for s in SCENARIOS])
def test_sigkill_at_a_step_boundary_then_redelivery_converges(azurite, request, failpoint, after, replica_head, seed):
    lake = Lake(azurite, request.node.name, table_overrides={"replicas": [
        {"name": "westeu", "connection": "WESTEU_STORAGE", "container": None, "path": "delta/sales"}]})
    lake.config_doc["tables"][0]["replicas"][0]["container"] = lake.container
    try:
        build(lake)
        head = lake.head("eastus")
        if seed:
            container = lake.clients["eastus"].get_container_client(lake.container)
            for name in lake.log_names("eastus"):
                if name[:20].isdigit() and int(name[:20]) < head:
                    container.delete_blob(f"{lake.table_path}/_delta_log/{name}")
        else:
            lake.deliver([e for e in lake.events() if e["data"]["url"].endswith(f"{replica_head:020d}.json")][0])
            assert lake.head("westeu") == replica_head
        first = min(int(n[:20]) for n in lake.log_names("eastus") if n[:20].isdigit())
        expected = {v: rows(lake.table("eastus", v).to_pyarrow_table()) for v in range(first, head + 1)}
        last_checkpoint_event = [e for e in lake.events() if e["data"]["url"].endswith("_last_checkpoint")][0]
        with ReplicaReader(lake, "westeu", expected) as reader:
            code = run_crashing_worker(lake, failpoint, after, last_checkpoint_event)
            assert code == -9, f"the failpoint {failpoint} was not reached (exit {code})"
            crashed_at = lake.head("westeu")
            # Event Grid redelivers; the dead worker's lease expires within 15 s.
            result = lake.deliver(last_checkpoint_event)
            assert [o.error for o in result.outcomes] == [None]
        reader.observe_once()
        assert reader.torn == []
        assert reader.observations and max(reader.observations) == head
        assert reader.observations == sorted(reader.observations)
        assert lake.head("westeu") == head
        # The replica holds only the table's files: no lease or other control blob, ever.
        assert set(lake.blobs("westeu")) <= set(lake.blobs("eastus"))
        assert lake.blob_bytes("westeu", "_delta_log/_last_checkpoint") == lake.blob_bytes("eastus", "_delta_log/_last_checkpoint")
        for v in range(first, head + 1):
            assert rows(lake.table("westeu", v).to_pyarrow_table()) == expected[v]
        print(f"crash {failpoint}#{after}: replica at {crashed_at} after the kill; reader saw "
              f"{len(reader.observations)} versions, {reader.not_yet_a_table} not-yet-a-table, torn={len(reader.torn)}")
    finally:
        lake.close()


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12))
def test_randomized_crash_points_converge(azurite, request, seed):
    """Random failpoint, hit count and starting head; run with --run-slow."""
    import random

    rng = random.Random(seed)
    failpoint = rng.choice([failpoints.FILE_COPIED, failpoints.COMMIT_BEFORE, failpoints.COMMIT_AFTER,
                            failpoints.CHECKPOINT_COPIED])
    replica_head = rng.randint(0, 5)
    after = 1 if failpoint == failpoints.CHECKPOINT_COPIED else rng.randint(1, 4)
    test_sigkill_at_a_step_boundary_then_redelivery_converges(azurite, request, failpoint, after, replica_head, False)
