"""infra/main.bicep survives its own failover: every location the app may write after a promote has the role.

Every location of a table can become the primary and every former primary becomes a replica again
(rejoin quarantines into it and deletes from its log), so each container a location (or snapshots)
uses gets Storage Blob Data Contributor, scoped to that container; each account holding a location
gets Storage Blob Data Reader (account-level: user delegation keys for copy SAS); and no data account
gets Contributor on the whole account (least privilege).
"""

from __future__ import annotations

from tests.support.bicep import Deployment
from tests.test_infra_private import INFRA, example_params

READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
ROLE = "Microsoft.Authorization/roleAssignments"


def scope_of(deployment: Deployment, assignment):
    """The deployed resource an assignment's `scope` names."""
    ref = assignment.body["scope"]
    assert isinstance(ref, tuple) and ref[0] == "decl", ref
    symbol, index = ref[1].symbol, ref[2]
    return next(i for i in deployment.instances + deployment.existing if i.symbol == symbol and i.index == index)


def granted(deployment: Deployment, role: str) -> set[tuple[str, str]]:
    """(resource type, resource name) of every scope the app's identity gets `role` on."""
    out = set()
    for a in deployment.instances:
        if a.type == ROLE and a.body["properties"]["roleDefinitionId"].endswith(role):
            target = scope_of(deployment, a)
            out.add((target.type, target.name))
    return out


def test_every_location_the_app_may_write_after_a_failover_has_contributor_on_its_container():
    params = example_params()
    deployment = Deployment(INFRA / "main.bicep", {**params, "privateNetworking": False})
    account_of = {s["connection"]: s["account"] for s in params["eventSubscriptions"]["sourceAccounts"]}
    account_of.update(params["replicaConnections"])
    locations, snapshots = set(), set()
    for table in params["replicationConfig"]["tables"]:
        for loc in [table["source"], *table["replicas"]]:
            locations.add((account_of[loc["connection"]], loc["container"]))
        snap = table.get("snapshots")
        if snap:
            replica = next(r for r in table["replicas"] if r["name"] == snap["replica"])
            snapshots.add((account_of[replica["connection"]], snap["container"]))
    source_account = account_of[params["replicationConfig"]["tables"][0]["source"]["connection"]]
    assert (source_account, "lake") in locations  # the configured primary is among them

    contributor = granted(deployment, CONTRIBUTOR)
    containers = {name for kind, name in contributor if kind.endswith("/containers")}
    assert containers == {f"{a}/default/{c}" for a, c in locations | snapshots}
    # Least privilege: no data account gets Contributor on the whole account.
    data_accounts = {a for a, _ in locations}
    assert not {name for kind, name in contributor if kind == "Microsoft.Storage/storageAccounts"} & data_accounts
    reader = {name for kind, name in granted(deployment, READER)}
    assert reader == data_accounts
