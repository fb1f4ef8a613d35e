"""Routing configuration: validation with field paths, and the preference list it yields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config.parse import parse_config
from shared.errors import ConfigError
from shared.reads.routing import preference_list
from tests.support.lake import batch

REPO = Path(__file__).resolve().parent.parent


def doc(routing=None) -> dict:
    table = {
        "name": "sales",
        "source": {"connection": "EASTUS_STORAGE", "container": "lake", "path": "delta/sales", "region": "eastus"},
        "replicas": [
            {"name": "westeu", "connection": "WESTEU_STORAGE", "container": "lake", "path": "s", "region": "westeu"},
            {"name": "seasia", "connection": "SEASIA_STORAGE", "container": "lake", "path": "s", "region": "seasia"},
        ],
    }
    if routing is not None:
        table["routing"] = routing
    return {"tables": [table]}


def names(table, region):
    return [loc.name for loc in preference_list(table, region, primary=table.source)]


def test_the_seed_example_routing_maps_regions_to_their_nearest_replica():
    table = parse_config(doc({"westus": ["primary"], "northeu": ["westeu", "primary"],
                              "eastasia": ["seasia", "primary"], "default": ["primary"]})).tables[0]
    assert names(table, "northeu") == ["westeu", "primary"]
    assert names(table, "eastasia") == ["seasia", "primary"]
    assert names(table, "westus") == ["primary"]
    assert names(table, "brazilsouth") == names(table, None) == ["primary"]


def test_without_routing_the_readers_region_then_the_primary_then_replicas_in_order():
    table = parse_config(doc()).tables[0]
    assert names(table, "seasia") == ["seasia", "primary", "westeu"]
    assert names(table, "eastus") == ["primary", "westeu", "seasia"]
    assert names(table, None) == ["primary", "westeu", "seasia"]


def test_routing_without_default_falls_back_to_the_nearest_order():
    table = parse_config(doc({"westus": ["primary"]})).tables[0]
    assert names(table, "westeu") == ["westeu", "primary", "seasia"]


@pytest.mark.parametrize("routing, expected", [
    ({"northeu": ["westeu", "brazil"]}, "tables[0].routing.northeu[1]: unknown location 'brazil'"),
    ({"default": []}, "tables[0].routing.default: expected a non-empty list of location names"),
    ({"North EU": ["westeu"]}, "tables[0].routing.North EU: expected an Azure region name"),
    ({"westus": ["primary", "primary"]}, "tables[0].routing.westus[1]: location 'primary' is listed twice"),
    (["primary"], "tables[0].routing: expected an object mapping a reader region to location names"),
])
def test_bad_routing_is_refused_with_its_field_path(routing, expected):
    with pytest.raises(ConfigError) as err:
        parse_config(doc(routing))
    assert expected in str(err.value)


def run_cli(lake, *args):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_STORAGE") and not k.startswith("REPLICATION_CONFIG")}
    env.update(lake.environ)
    env["REPLICATION_CONFIG"] = json.dumps(lake.config_doc)
    return subprocess.run([sys.executable, "-m", "cli", "endpoint", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_endpoint_prints_the_chosen_location_and_refuses_bad_input(lake):
    lake.config_doc["tables"][0]["replicas"][0]["region"] = "westeu"
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.deliver_all(lake.events())
    lake.write(batch(5, 5), partition_by=["region"])  # westeu is one version behind now
    result = run_cli(lake, "--table", "sales", "--region", "westeu", "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert (body["location"], body["version"], body["staleness_basis"]) == ("westeu", 0, "measured")
    result = run_cli(lake, "--table", "sales", "--region", "westeu", "--min-version", "1", "--json")
    body = json.loads(result.stdout)
    assert (body["location"], body["version"], body["tried"][0]["reason"]) == ("primary", 1, "behind_min_version")
    result = run_cli(lake, "--table", "sales", "--region", "westeu", "--min-version", "99")
    assert result.returncode == 1
    assert [line.split()[:2] for line in result.stdout.splitlines()[1:]] == \
        [["westeu", "behind_min_version"], ["primary", "behind_min_version"], ["seasia", "behind_min_version"]]
    result = run_cli(lake, "--table", "sales", "--max-staleness", "soon")
    assert result.returncode == 2 and "max_staleness_seconds must be a number" in result.stderr
    assert "usage: python -m cli endpoint" in run_cli(lake, "--help").stdout
