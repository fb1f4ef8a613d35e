"""Group failover (issue 25): `promote --group` flips every table of a group to one location; with
`--consistent` the new primaries stand at the group's recovery point and what lay above it is
quarantined, replayable; `rejoin --group` brings the old primary back losing nothing; a planned group
promote flips none unless every table can be flipped."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from shared.app.commit_event import EventDisposition, handle_storage_event
from shared.app.lag_check import check_replication
from shared.errors import PromotionRefused
from shared.failover.group_promote import GroupRecords, promote_group
from shared.health.status import StatusStore
from tests.test_cli import run_cli
from tests.test_groups import PREFIX, GroupLake, batch, commit_time


def heal(lake: GroupLake) -> None:
    check_replication(lake.runtime, StatusStore(lake.runtime.table_service(), table_name="S" + uuid.uuid4().hex[:12]),
                      None)


def test_a_forced_consistent_group_promote_and_a_group_rejoin_lose_nothing(azurite, request):
    lake = GroupLake(azurite, request.node.name)
    orders, customers = lake.name("sales/orders"), lake.name("sales/customers")
    try:
        for relative in ("sales/orders", "sales/customers"):
            lake.write(relative, batch(0, 4))
        heal(lake)
        lake.write("sales/orders", batch(4, 4))  # orders v1: its events are lost (the region goes down)
        lake.write("sales/customers", batch(4, 4))  # customers v1, after it: replicated
        o1, c1 = commit_time(lake, "sales/orders", 1), commit_time(lake, "sales/customers", 1)
        assert o1 < c1
        for event in lake.events("sales/customers"):
            assert handle_storage_event(lake.runtime, event).disposition == EventDisposition.HANDLED
        written = {r: lake.read("eastus", r) for r in ("sales/orders", "sales/customers")}

        promoted = run_cli(lake, "promote", "--group", lake.group, "--to", "westeu", "--force", "--consistent",
                           "--json")
        assert promoted.returncode == 0, promoted.stderr
        doc = json.loads(promoted.stdout)
        point = (o1 - timedelta(milliseconds=1)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert (doc["recoveryPoint"], doc["groupEpoch"], doc["alreadyPrimary"]) == (point, 1, [])
        assert sorted((t["table"], t["primary"], t["epoch"], t["promotedAtVersion"], t["quarantinedVersions"])
                      for t in doc["tables"]) == [(customers, "westeu", 1, 0, [1]), (orders, "westeu", 1, 0, [])]
        # One moment: both new primaries read as of the point (customers' v1 came after orders' lost v1).
        assert [lake.version("westeu", r) for r in ("sales/orders", "sales/customers")] == [0, 0]
        assert (GroupRecords(lake.runtime.table_service()).get(lake.group) or {}).get("State") == "done"
        listed = run_cli(lake, "quarantine", "list", "--table", customers, "--json")
        assert listed.returncode == 0, listed.stderr
        assert [(c["location"], c["epoch"], c["version"]) for c in json.loads(listed.stdout)] == [("westeu", 1, 1)]

        rejoined = run_cli(lake, "rejoin", "--group", lake.group, "--location", "eastus", "--json")
        assert rejoined.returncode == 0, rejoined.stderr
        rdoc = json.loads(rejoined.stdout)
        # eastus held each table's v1 and the fence the promote put on it (v2): both quarantined there.
        assert (sorted((t["table"], t["quarantinedVersions"], t["fenceVersions"], t["headAfter"])
                       for t in rdoc["tables"]), rdoc["failed"]) == \
            ([(customers, [1, 2], [2], 0), (orders, [1, 2], [2], 0)], [])
        # Nothing lost: replaying epoch 1's quarantines puts every row written back, exactly once
        # (customers' v1 is quarantined in both locations: one replay).
        for name in (orders, customers):
            replayed = run_cli(lake, "quarantine", "replay", "--table", name, "--epoch", "1", "--json")
            assert replayed.returncode == 0, replayed.stderr
            assert json.loads(replayed.stdout)["applied"] == [1]
        assert {r: lake.read("westeu", r) for r in written} == written
    finally:
        lake.close()


def test_a_planned_group_promote_flips_no_table_unless_every_one_can(azurite, request):
    lake = GroupLake(azurite, request.node.name)
    try:
        for relative in ("sales/orders", "sales/customers"):
            lake.write(relative, batch(0, 4))
        heal(lake)
        lake.write("sales/orders", batch(4, 4))  # westeu cannot reach orders' head in no time
        with pytest.raises(PromotionRefused, match=r"location westeu of table .*sales\.orders is at version 0"):
            promote_group(lake.runtime, lake.group, "westeu", timeout=0)
        assert {t.name: lake.runtime.topology(t.name).primary for t in lake.runtime.tables()} == \
            {lake.name("sales/orders"): "eastus", lake.name("sales/customers"): "eastus"}
        assert GroupRecords(lake.runtime.table_service()).get(lake.group) is None
        # With time to catch up, every table flips, and a second run finds nothing left to flip.
        result = promote_group(lake.runtime, lake.group, "westeu", timeout=60)
        assert sorted((t["table"], t["epoch"], t["promotedAtVersion"]) for t in result.tables) == \
            [(lake.name("sales/customers"), 1, 0), (lake.name("sales/orders"), 1, 1)]
        again = promote_group(lake.runtime, lake.group, "westeu", timeout=60)
        assert (again.tables, sorted(again.already)) == \
            ([], sorted([lake.name("sales/customers"), lake.name("sales/orders")]))
    finally:
        lake.close()


def test_a_drill_changes_nothing_and_writes_evidence_of_what_a_failover_would_lose(azurite, request, tmp_path):
    lake = GroupLake(azurite, request.node.name)
    try:
        for relative in ("sales/orders", "sales/customers"):
            lake.write(relative, batch(0, 4))
        heal(lake)
        lake.write("sales/orders", batch(4, 5))  # orders v1 (5 rows) not at westeu yet
        o1 = commit_time(lake, "sales/orders", 1)
        before = {a: lake.blob_names(a) for a in ("eastus", "westeu", "seasia")}
        report = tmp_path / "drill.md"
        drilled = run_cli(lake, "drill", "--group", lake.group, "--to", "westeu", "--json", "--report", str(report))
        assert drilled.returncode == 0, drilled.stderr
        doc = json.loads(drilled.stdout)
        point = (o1 - timedelta(milliseconds=1)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert (doc["usable"], doc["recoveryPoint"], doc["versionsLost"], doc["rowsLost"]) == (True, point, 1, 5)
        assert sorted((t["table"], t["targetHead"], t["primaryHead"], t["readsAtHead"], t["versionsLost"],
                       t["rowsLost"]) for t in doc["tables"]) == [
            (lake.name("sales/customers"), 0, 0, True, 0, 0), (lake.name("sales/orders"), 0, 1, True, 1, 5)]
        assert json.loads(report.with_suffix(".json").read_text()) == doc
        assert f"# Failover drill: group {lake.group} to westeu" in report.read_text()
        assert "lose 1 version(s), 5 row(s)" in report.read_text()
        # Nothing changed anywhere: no blob, no topology.
        assert {a: lake.blob_names(a) for a in ("eastus", "westeu", "seasia")} == before
        assert {t.name: lake.runtime.topology(t.name).epoch for t in lake.runtime.tables()} == \
            {lake.name("sales/orders"): 0, lake.name("sales/customers"): 0}
        # A target that holds no table's log is not usable: exit 1.
        lake.clients["westeu"].get_container_client(lake.container).delete_blobs(
            *[n for n in lake.blob_names("westeu") if "sales/customers/_delta_log/" in n])
        unusable = run_cli(lake, "drill", "--group", lake.group, "--to", "westeu", "--json")
        assert unusable.returncode == 1, unusable.stderr
        rows = {t["table"]: t for t in json.loads(unusable.stdout)["tables"]}
        assert (rows[lake.name("sales/customers")]["readsAtHead"], rows[lake.name("sales/customers")]["problem"]) == \
            (False, "the target holds no version of the table")
    finally:
        lake.close()


def test_a_group_replica_trimmed_within_the_epoch_never_gets_a_commit_above_a_gap(azurite, request):
    """A consistent group promote trims the target's log above the recovery point while the epoch is unchanged
    (under the target's lease, which the hot path does not take). The next commit's event must find the trim
    (it reads the replica's N-1) and catch the replica up in order, never create N above the gap: a group's
    tables do not use what this process remembers writing (replicator.py, `_written`)."""
    lake = GroupLake(azurite, request.node.name)
    relative = "sales/customers"
    try:
        for i in range(3):
            lake.write(relative, batch(4 * i, 4))
        for event in lake.events(relative):
            assert handle_storage_event(lake.runtime, event).disposition == EventDisposition.HANDLED
        assert lake.version("westeu", relative) == 2
        # The trim, as _trim_to_point removes versions above the point: highest first, the commit last.
        log = f"{PREFIX['westeu']}/{relative}/_delta_log/"
        container = lake.clients["westeu"].get_container_client(lake.container)
        for v in (2, 1):
            container.delete_blob(f"{log}{v:020d}.json")
        lake.write(relative, batch(12, 4))
        (event,) = [e for e in lake.events(relative) if e["subject"].endswith(f"{3:020d}.json")]
        result = handle_storage_event(lake.runtime, event)
        westeu = [o for o in result.outcomes if o.replica == "westeu"]
        assert [(o.error, o.head_after) for o in westeu] == [(None, 3)]
        versions = sorted(int(b.name.rsplit("/", 1)[1][:20]) for b in container.list_blobs(name_starts_with=log)
                          if b.name.endswith(".json") and b.name.rsplit("/", 1)[1][:20].isdigit())
        assert versions == [0, 1, 2, 3]  # caught up in order: no commit above a gap
        assert lake.read("westeu", relative) == lake.read("eastus", relative)
    finally:
        lake.close()
