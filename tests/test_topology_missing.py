"""A missing ReplicationTopology table is "never promoted" only while no location holds a
promotion marker (issue 20, case 8): the function app's storage replaced after a promote is
TopologyUnavailable, never epoch 0, and `topology restore` rebuilds the rows from the markers."""

from __future__ import annotations

import json

import pytest
from azure.data.tables import TableServiceClient

from devtools.azurite import AzuriteProcess
from shared.config.parse import parse_config
from shared.errors import TopologyUnavailable
from shared.failover.markers import PromotionMarkers
from shared.failover.promote import promote
from shared.failover.topology import TOPOLOGY_TABLE
from shared.runtime import ReplicationRuntime
from tests.support.failover import deliver_new, failover_lake
from tests.support.lake import batch
from tests.test_cli import run_cli


@pytest.fixture
def fresh_host():
    """Another function app storage account: blobs and tables, nothing in them."""
    proc = AzuriteProcess((), with_table=True).start()
    yield proc
    proc.close()


def host_environ(lake, host: AzuriteProcess) -> dict:
    return {**lake.environ, "AzureWebJobsStorage": host.connection_string("devstoreaccount1")}


def test_replaced_host_storage_after_a_promote_is_topology_unavailable_not_epoch_zero(azurite, request, fresh_host):
    lake = failover_lake(azurite, request.node.name)
    name = lake.table_name
    environ = host_environ(lake, fresh_host)
    replaced = ReplicationRuntime(parse_config(lake.config_doc), environ)
    tables = TableServiceClient.from_connection_string(environ["AzureWebJobsStorage"])
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        lake.write(batch(5, 5), partition_by=["region"])
        deliver_new(lake, "eastus", set())
        # Never promoted: a missing table is epoch 0 (every location answered without a marker),
        # and the empty table is created so the next reads are one point read.
        assert (replaced.topology(name).primary, replaced.topology(name).epoch) == ("eastus", 0)
        created = TOPOLOGY_TABLE in [t.name for t in tables.list_tables()]
        promote(lake.runtime, name, "westeu", force=True)
        # The host storage is replaced (its tables gone): the markers say westeu is primary at epoch 1.
        tables.delete_table(TOPOLOGY_TABLE)
        reader = ReplicationRuntime(parse_config(lake.config_doc), environ)
        with pytest.raises(TopologyUnavailable, match=r"holds a promotion marker \(epoch 1, primary westeu\)"):
            reader.topology(name)
        reader.close()
        # The operator restores the rows from the markers; the topology reads as before.
        restored = run_cli(lake, "topology", "restore", "--table", name, "--json", env_extra=environ)
        assert restored.returncode == 0, restored.stderr
        assert (json.loads(restored.stdout)["primary"], json.loads(restored.stdout)["epoch"]) == ("westeu", 1)
        again = ReplicationRuntime(parse_config(lake.config_doc), environ)
        topology = again.topology(name)
        assert (topology.primary, topology.epoch, topology.promoted_at_version, topology.previous_primary) == \
            ("westeu", 1, 1, "eastus")
        assert [(h.epoch, h.primary) for h in again.topology_store().history(again.config.table(name))] == \
            [(1, "westeu")]
        again.close()
        assert created  # (checked last so that, before this change, the test fails on the epoch-0 read)
    finally:
        tables.close()
        replaced.close()
        lake.close()


@pytest.mark.parametrize("bare_at", ["eastus", "westeu"])
def test_at_one_epoch_a_marker_with_its_history_wins_over_a_bare_quarantine_wherever_each_is(azurite, request,
                                                                                           bare_at):
    """At equal epochs the marker naming its primary and history is the evidence, never a quarantine
    folder of the same epoch (which names no primary), whichever location is searched first."""
    lake = failover_lake(azurite, request.node.name)
    name = lake.table_name
    try:
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        deliver_new(lake, "eastus", set())
        promote(lake.runtime, name, "westeu", force=True)
        table = lake.runtime.config.table(name)
        loc = next(loc for loc in table.locations if loc.name == bare_at)
        folder = lake.runtime.stores.folder(loc, f"_quarantine/{loc.path}", label=loc.name)
        # That location holds only a quarantine of epoch 1 (as before markers existed), the other the marker.
        assert folder.delete_files(["topology/epoch-1.json"]) == 1
        assert folder.put_file("epoch-1/_delta_log/00000000000000000001.json", b"{}")
        found = PromotionMarkers(lake.runtime).latest(table)
        assert (found.location, found.marker["epoch"], found.marker["primary"],
                [h["primary"] for h in found.marker["history"]]) == \
            ({"eastus": "westeu", "westeu": "eastus"}[bare_at], 1, "westeu", ["westeu"])
    finally:
        lake.close()
