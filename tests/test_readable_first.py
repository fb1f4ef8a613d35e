"""Readable first, history behind: an empty replica of a table with a checkpoint is readable at the
primary's newest checkpoint first; older versions are backfilled in ascending order by later
catch-ups, and a reader asking for a version not yet backfilled gets an error, never other rows."""

from __future__ import annotations

import copy
import json
import re
import time

import pytest

from shared.config.parse import parse_config
from shared.errors import ConfigError
from shared.health.lag import ReplicaHealth, measure_table
from shared.replication.history import MissingHistory
from tests.support.lake import Lake, batch, rows

COMMIT = re.compile(r"(\d{20})\.json")


def tuned(lake: Lake, backfill_step_versions: int) -> Lake:
    """The lake, its runtime backfilling at most this many versions per catch-up (REPLICATION_TUNING)."""
    lake.close_runtime()
    lake.environ["REPLICATION_TUNING"] = json.dumps({"backfill_step_versions": backfill_step_versions})
    return lake


def commits(lake: Lake, account: str) -> list[int]:
    return sorted(int(m.group(1)) for n in lake.log_names(account) if (m := COMMIT.fullmatch(n)))


def build(lake: Lake) -> None:
    """Versions 0..12 with checkpoints at 4 and 9 (checkpointInterval 5, delta-rs counts from 0)."""
    lake.write(batch(0, 5), mode="overwrite", configuration={"delta.checkpointInterval": "5"})
    for i in range(1, 13):
        lake.write(batch(100 * i, 5))
    assert lake.head("eastus") == 12
    assert {n for n in lake.log_names("eastus") if ".checkpoint." in n} == {
        f"{4:020d}.checkpoint.parquet", f"{9:020d}.checkpoint.parquet"}


def assert_same_rows(lake: Lake, account: str, version: int) -> None:
    assert rows(lake.table(account, version).to_pyarrow_table()) == rows(lake.table("eastus", version).to_pyarrow_table())


def assert_not_readable(lake: Lake, account: str, version: int) -> None:
    with pytest.raises(Exception) as info:  # deltalake raises its own error types
        lake.table(account, version).to_pyarrow_table()
    assert not isinstance(info.value, AssertionError)


def details(lake: Lake) -> dict[str, tuple[ReplicaHealth, int | None, str]]:
    return {lag.replica: (lag.status, lag.replica_version, lag.detail)
            for lag in measure_table(lake.runtime.replicators["sales"])}


def test_readable_at_the_checkpoint_first_then_history_backfilled_ascending(azurite, request):
    # Step 1 with no room for history: readable at the head from the newest checkpoint.
    lake = tuned(Lake(azurite, request.node.name), 0)
    try:
        build(lake)
        replicator = lake.runtime.replicators["sales"]
        outcomes = replicator.replicate(None)
        assert [(o.replica, o.error, o.head_after, o.seeded, o.history, o.backfilled) for o in outcomes] == [
            ("westeu", None, 12, 9, MissingHistory(0, 8, 9), 0), ("seasia", None, 12, 9, MissingHistory(0, 8, 9), 0)]
        assert all(o.readable_seconds is not None for o in outcomes)
        for account in ("westeu", "seasia"):
            assert commits(lake, account) == [9, 10, 11, 12]
            assert json.loads(lake.blob_bytes(account, "_delta_log/_last_checkpoint"))["version"] == 9
            assert_same_rows(lake, account, 12)
            assert_same_rows(lake, account, 9)
            assert_not_readable(lake, account, 8)
            assert_not_readable(lake, account, 0)
        assert details(lake) == {r: (ReplicaHealth.HEALTHY, 12, "history backfilling: versions 0..8")
                                 for r in ("westeu", "seasia")}
        replicator = tuned(lake, 4).runtime.replicators["sales"]
        # Step 2: versions 0..3, in ascending order; 4..8 still missing and not readable.
        outcomes = replicator.replicate(None)
        assert [(o.error, o.history, o.backfilled) for o in outcomes] == [(None, MissingHistory(4, 8, 9), 4)] * 2
        assert commits(lake, "westeu") == [0, 1, 2, 3, 9, 10, 11, 12]
        for v in (0, 3):
            assert_same_rows(lake, "westeu", v)
        for v in (4, 5, 8):
            assert_not_readable(lake, "westeu", v)
        assert details(lake)["westeu"] == (ReplicaHealth.HEALTHY, 12, "history backfilling: versions 4..8")
        # Step 3: 4..7 with the checkpoint at 4 (copied after its commit).
        outcomes = replicator.replicate(None)
        assert [(o.error, o.history, o.backfilled) for o in outcomes] == [(None, MissingHistory(8, 8, 9), 4)] * 2
        assert commits(lake, "seasia") == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12]
        assert f"{4:020d}.checkpoint.parquet" in lake.log_names("seasia")
        assert_same_rows(lake, "seasia", 6)
        assert_not_readable(lake, "seasia", 8)
        # Step 4: done; every version reads as on the primary, and the status says nothing more.
        outcomes = replicator.replicate(None)
        assert [(o.error, o.history, o.backfilled) for o in outcomes] == [(None, None, 1)] * 2
        lake.assert_replicas_equal(every_version=True)
        assert details(lake) == {r: (ReplicaHealth.HEALTHY, 12, "") for r in ("westeu", "seasia")}
        outcomes = replicator.replicate(None)  # nothing left: an idle step writes nothing
        assert [(o.error, o.history, o.backfilled, o.files) for o in outcomes] == [(None, None, 0, 0)] * 2
    finally:
        lake.close()


def test_commit_events_keep_the_head_current_while_history_is_missing(azurite, request):
    lake = tuned(Lake(azurite, request.node.name), 0)
    try:
        build(lake)
        lake.runtime.replicators["sales"].replicate(None)
        lake.write(batch(5000, 5))
        (event,) = [e for e in lake.events() if e["subject"].endswith(f"{13:020d}.json")]
        (result,) = lake.deliver_all([event])
        assert [(o.error, o.head_after, o.backfilled) for o in result.outcomes] == [(None, 13, 0)] * 2
        assert commits(lake, "westeu") == [9, 10, 11, 12, 13]  # events never backfill: the hot path stays short
        assert_same_rows(lake, "westeu", 13)
    finally:
        lake.close()


def test_history_from_checkpoint_skips_the_backfill(azurite, request):
    lake = Lake(azurite, request.node.name, table_overrides={"history": "from_checkpoint"})
    try:
        build(lake)
        replicator = lake.runtime.replicators["sales"]
        for _ in range(2):
            outcomes = replicator.replicate(None)
            assert [(o.error, o.head_after, o.history, o.backfilled) for o in outcomes] == [(None, 12, None, 0)] * 2
        assert commits(lake, "westeu") == [9, 10, 11, 12]
        assert_same_rows(lake, "westeu", 12)
        assert details(lake) == {r: (ReplicaHealth.HEALTHY, 12, "") for r in ("westeu", "seasia")}
    finally:
        lake.close()


def test_history_setting_is_validated_with_its_field_path():
    doc = {"tables": [{"name": "sales",
                       "source": {"connection": "EASTUS_STORAGE", "container": "sales", "path": "t"},
                       "replicas": [{"name": "westeu", "connection": "WESTEU_STORAGE", "container": "sales", "path": "t"}]}]}
    assert parse_config(doc).tables[0].history == "full"
    for value in ("full", "from_checkpoint"):
        good = copy.deepcopy(doc)
        good["tables"][0]["history"] = value
        assert parse_config(good).tables[0].history == value
    for value in ("partial", None, ["full"]):
        bad = copy.deepcopy(doc)
        bad["tables"][0]["history"] = value
        with pytest.raises(ConfigError) as info:
            parse_config(bad)
        assert "tables[0].history: expected one of ['full', 'from_checkpoint']" in str(info.value)


def test_history_the_primary_vacuumed_blocks_the_backfill_without_failing_the_replica(azurite, request, caplog):
    lake = Lake(azurite, request.node.name, table_overrides={"replicas": [
        {"name": "westeu", "connection": "WESTEU_STORAGE", "container": "placeholder", "path": "delta/sales"}]})
    lake.config_doc["tables"][0]["replicas"][0]["container"] = lake.container
    try:
        build(lake)
        lake.write(batch(5000, 5), mode="overwrite")  # v13 removes every earlier file
        time.sleep(1.1)  # VACUUM compares deletion timestamps with the clock
        vacuumed = lake.table().vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
        assert len(vacuumed) == 13
        lake.table().create_checkpoint()
        head = lake.head("eastus")
        caplog.set_level("WARNING")
        (outcome,) = lake.runtime.replicators["sales"].replicate(None)
        # Readable at the head from the newest checkpoint; the vacuumed history cannot be copied.
        assert outcome.error is None and outcome.head_after == head == lake.head("westeu")
        assert outcome.history is not None and outcome.history.low == 0
        assert_same_rows(lake, "westeu", head)
        blocked = [r.getMessage() for r in caplog.records if r.getMessage().startswith("history.backfill_blocked")]
        assert len(blocked) == 1 and "table=sales replica=westeu versions=0.." in blocked[0]
        # The next catch-up (a lag check) tries again and again reports no error.
        (again,) = lake.runtime.replicators["sales"].replicate(None)
        assert again.error is None and again.history is not None
    finally:
        lake.close()


def test_backfill_writes_a_batch_at_once_and_a_hole_it_leaves_reads_as_an_error(azurite, request):
    """History below the readable run is written a batch of commits at once: a version whose
    chain has a hole (a write that failed) is an error for readers, never other rows, and the
    next step fills the hole."""
    from shared import failpoints

    lake = tuned(Lake(azurite, request.node.name), 0)
    try:
        build(lake)
        lake.runtime.replicators["sales"].replicate(None)  # readable at 9..12, history 0..8 missing
        replicator = tuned(lake, 5000).runtime.replicators["sales"]

        def fail() -> None:
            raise OSError("injected: the commit write failed")

        failpoints.arm(failpoints.COMMIT_BEFORE, after=3, action=fail, where={"replica": "westeu"})
        try:
            outcomes = {o.replica: o for o in replicator.replicate(None)}
        finally:
            failpoints.disarm_all()
        assert outcomes["seasia"].error is None and outcomes["seasia"].history is None
        assert "injected: the commit write failed" in str(outcomes["westeu"].error)
        (hole,) = sorted(set(range(9)) - set(commits(lake, "westeu")))  # exactly the failed write
        assert commits(lake, "westeu") == [v for v in range(13) if v != hole]
        for v in range(hole):
            assert_same_rows(lake, "westeu", v)
        assert_not_readable(lake, "westeu", hole)
        for v in range(hole + 1, 9):
            # Above the hole: readable only through a checkpoint after it, and then right.
            try:
                got = rows(lake.table("westeu", v).to_pyarrow_table())
            except Exception as err:  # noqa: BLE001 - deltalake's own error types
                assert "contiguous" in str(err) or "version" in str(err).lower(), err
                assert v < 4 or hole >= 4, f"version {v} has the checkpoint at 4 and should read"
            else:
                assert got == rows(lake.table("eastus", v).to_pyarrow_table()), v
                assert hole < 4 <= v  # only via the checkpoint at 4
        assert_same_rows(lake, "westeu", 12)
        assert details(lake)["westeu"] == (ReplicaHealth.HEALTHY, 12, f"history backfilling: versions {hole}..{hole}")
        # The next step fills the hole; the history is complete.
        outcomes = replicator.replicate(None)
        assert [(o.error, o.history) for o in outcomes] == [(None, None)] * 2
        lake.assert_replicas_equal(every_version=True)
    finally:
        lake.close()


def test_the_backfill_after_a_seed_sends_nothing_for_the_files_the_seed_copied(azurite, request):
    """Appends only: every file of the history is live at the checkpoint, so the seed copied it;
    the backfill in the same invocation writes the old commits without a request for them."""

    from shared.config.parse import parse_config
    from shared.runtime import ReplicationRuntime
    from tests.scenarios.test_data_safety import RequestAudit

    lake = Lake(azurite, request.node.name)
    audit = RequestAudit()
    runtime = ReplicationRuntime(parse_config(lake.config_doc), lake.environ, counter=audit)
    try:
        build(lake)
        outcomes = runtime.replicators["sales"].replicate(None)
        assert [(o.error, o.seeded, o.history, o.backfilled) for o in outcomes] == [(None, 9, None, 9)] * 2
        data = [(method, account, path) for method, account, path, *_ in audit.requests
                if path.endswith(".parquet") and "/_delta_log/" not in path and account != "eastus"]
        files = {(account, path) for _, account, path in data}
        assert len(files) == 2 * 13  # 13 data files, on each replica
        # Only the seed's and the catch-up's PUTs (an emulator hiccup may repeat one: a retry),
        # nothing else: no HEAD asking, no failed copy attempt followed by its check.
        assert {method for method, _, _ in data} == {"PUT"}
        assert all(o.files == 13 and o.files_present == 9 for o in outcomes)  # the backfill's 9 known files
        lake.assert_replicas_equal(every_version=True)
    finally:
        runtime.close()
        lake.close()
