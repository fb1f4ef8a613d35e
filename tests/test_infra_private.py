"""infra/ with privateNetworking on and off, expanded from the Bicep text for the example parameters.

For every storage account the example deploys or names (the host account, the source and both
replicas): private endpoints per service, each with a DNS zone group pointing at the matching
privatelink zone linked to the VNet, public network access disabled and shared keys off when
private access is on; none of it when it is off.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.bicep import BicepError, Deployment, Opaque

INFRA = Path(__file__).resolve().parent.parent / "infra"
STORAGE = "Microsoft.Storage/storageAccounts"
ENDPOINT = "Microsoft.Network/privateEndpoints"
ZONE_GROUP = "Microsoft.Network/privateEndpoints/privateDnsZoneGroups"
ZONE = "Microsoft.Network/privateDnsZones"
ZONE_LINK = "Microsoft.Network/privateDnsZones/virtualNetworkLinks"
VNET = "Microsoft.Network/virtualNetworks"
SUBNET = "Microsoft.Network/virtualNetworks/subnets"


def example_params() -> dict:
    doc = json.loads((INFRA / "main.parameters.example.json").read_text())
    return {k: v["value"] for k, v in doc["parameters"].items()}


def expected_accounts(params: dict) -> dict[str, set[str]]:
    """Account name -> the storage services it must be reached through privately."""
    host = (params["appName"] + "host").replace("-", "").lower()[:24]  # as main.bicep names it
    accounts = {host: {"blob", "dfs", "table", "queue"}}
    for source in params["eventSubscriptions"]["sourceAccounts"]:
        accounts[source["account"]] = {"blob", "dfs"}
    for account in params["replicaConnections"].values():
        accounts[account] = {"blob", "dfs"}
    return accounts


def deploy(private: bool) -> Deployment:
    return Deployment(INFRA / "main.bicep", {**example_params(), "privateNetworking": private})


def test_private_networking_locks_down_every_storage_account():
    params = example_params()
    accounts = expected_accounts(params)
    assert len(accounts) == 4  # host, contosoeastus, contosowesteu, contososeasia
    d = deploy(True)
    (vnet,) = d.of_type(VNET)
    subnets = {s.name: s for s in d.of_type(SUBNET)}
    assert set(subnets) == {"functions", "private-endpoints"}
    assert all(s.parent == vnet.key for s in subnets.values())
    endpoint_subnet = f"{SUBNET}/private-endpoints"
    zones = {z.name: z for z in d.of_type(ZONE)}
    links = d.of_type(ZONE_LINK)
    for group in ("blob", "dfs", "table", "queue"):
        zone = zones[f"privatelink.{group}.core.windows.net"]
        (link,) = [link for link in links if link.parent == zone.key]
        assert link.body["properties"]["virtualNetwork"]["id"] == vnet.id
        assert link.body["properties"]["registrationEnabled"] is False
    endpoints = d.of_type(ENDPOINT)
    zone_groups = d.of_type(ZONE_GROUP)
    for name, groups in accounts.items():
        (account,) = [a for a in d.of_type(STORAGE) if a.name == name]
        props = account.body["properties"]
        assert props["publicNetworkAccess"] == "Disabled", name
        assert props["allowSharedKeyAccess"] is False, name
        mine = [e for e in endpoints
                if e.body["properties"]["privateLinkServiceConnections"][0]["properties"]["privateLinkServiceId"] == account.id]
        found = sorted(g for e in mine for g in e.body["properties"]["privateLinkServiceConnections"][0]["properties"]["groupIds"])
        assert found == sorted(groups), name
        for e in mine:
            assert e.body["properties"]["subnet"]["id"] == endpoint_subnet
            (group,) = e.body["properties"]["privateLinkServiceConnections"][0]["properties"]["groupIds"]
            (zone_group,) = [z for z in zone_groups if z.parent == e.key]
            (config,) = zone_group.body["properties"]["privateDnsZoneConfigs"]
            assert config["properties"]["privateDnsZoneId"] == zones[f"privatelink.{group}.core.windows.net"].id, \
                (name, group)
    # The data accounts keep their own region, sku and kind (read from the existing accounts).
    locked = [a for a in d.of_type(STORAGE) if a.file == "private-storage.bicep"]
    assert len(locked) == 3
    for account in locked:
        for key in ("location", "kind"):
            assert account.body[key] == Opaque(f"dataAccountsExisting.{key}")
    # The function app: integrated into the delegated subnet, all outbound traffic through the VNet.
    (app,) = d.of_type("Microsoft.Web/sites")
    assert app.body["properties"]["virtualNetworkSubnetId"] == f"{SUBNET}/functions"
    assert app.body["properties"]["siteConfig"]["vnetRouteAllEnabled"] is True
    delegation = subnets["functions"].body["properties"]["delegations"][0]["properties"]["serviceName"]
    assert delegation == "Microsoft.App/environments"
    # Shared keys can be off because every connection the app has is identity-based.
    settings = app.body["properties"]["siteConfig"]["appSettings"]
    assert all(not isinstance(s["value"], str) or "AccountKey" not in s["value"] for s in settings)
    storage_settings = [s["name"] for s in settings if s["name"].endswith(("_STORAGE", "AzureWebJobsStorage"))]
    assert storage_settings == []
    # Dead letters reach the locked-down host account with the system topic's own identity.
    # One subscription per location that can become primary (eastus, westeu, seasia).
    subscriptions = d.of_type("Microsoft.EventGrid/systemTopics/eventSubscriptions")
    assert len(subscriptions) == 3
    for subscription in subscriptions:
        assert subscription.body["properties"]["deadLetterDestination"] is None
        dead = subscription.body["properties"]["deadLetterWithResourceIdentity"]
        assert dead["identity"]["type"] == "SystemAssigned"
        assert dead["deadLetterDestination"]["properties"]["blobContainerName"] == "eventgrid-deadletters"


def test_without_private_networking_nothing_private_is_deployed():
    accounts = expected_accounts(example_params())
    d = deploy(False)
    for type_name in (ENDPOINT, ZONE_GROUP, ZONE, ZONE_LINK, VNET, SUBNET):
        assert d.of_type(type_name) == [], type_name
    # Only the host account is declared (the data accounts are left exactly as they are).
    (host,) = d.of_type(STORAGE)
    assert host.name in accounts
    assert "publicNetworkAccess" not in host.body["properties"]
    assert "allowSharedKeyAccess" not in host.body["properties"]
    (app,) = d.of_type("Microsoft.Web/sites")
    assert app.body["properties"]["virtualNetworkSubnetId"] is None
    assert app.body["properties"]["siteConfig"]["vnetRouteAllEnabled"] is False
    subscriptions = d.of_type("Microsoft.EventGrid/systemTopics/eventSubscriptions")
    assert len(subscriptions) == 3
    for subscription in subscriptions:
        assert subscription.body["properties"]["deadLetterWithResourceIdentity"] is None
        assert subscription.body["properties"]["deadLetterDestination"]["endpointType"] == "StorageBlob"


def test_the_evaluator_refuses_conditions_it_cannot_decide(tmp_path):
    template = tmp_path / "t.bicep"
    template.write_text("param on bool\nresource x 'A/b@1' = if (resourceGroup().location == 'x') {\n  name: 'x'\n}\n")
    with pytest.raises(BicepError, match="not decidable"):
        Deployment(template, {"on": True})
    with pytest.raises(BicepError, match="no such parameter"):
        Deployment(template, {"on": True, "typo": 1})
