import json

import pytest

from shared.config.parse import parse_config
from shared.config.settings import load_config, resolve_connection
from shared.errors import ConfigError

KEY = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk="
CONN = f"DefaultEndpointsProtocol=http;AccountName=eastus;AccountKey={KEY};BlobEndpoint=http://127.0.0.1:10000/eastus;"


def sample() -> dict:
    return {
        "tables": [{
            "name": "sales",
            "source": {"connection": "EASTUS_STORAGE", "container": "lake", "path": "delta/sales"},
            "replicas": [
                {"name": "westeu", "connection": "WESTEU_STORAGE", "container": "lake", "path": "delta/sales"},
                {"name": "seasia", "connection": "SEASIA_STORAGE", "container": "lake", "path": "delta/sales"},
            ],
            "lag_threshold_seconds": 600,
            "snapshots": {"replica": "westeu", "container": "snapshots", "path": "sales", "keep_last": 7},
        }]
    }


def test_readme_example_config_parses_into_frozen_dataclasses():
    config = parse_config(sample())
    table = config.table("sales")
    assert [r.name for r in table.replicas] == ["westeu", "seasia"]
    assert table.snapshots.keep_last == 7 and table.lag_threshold_seconds == 600
    assert table.allow_external_files is False
    with pytest.raises(AttributeError):
        table.name = "other"  # frozen


def test_config_file_setting_is_read(tmp_path):
    path = tmp_path / "replication.json"
    path.write_text(json.dumps(sample()))
    assert load_config({"REPLICATION_CONFIG_FILE": str(path)}).tables[0].name == "sales"


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["tables"][0]["replicas"][1].update(connection="bad name"), "tables[0].replicas[1].connection"),
    (lambda c: c["tables"][0]["source"].update(container="UPPER"), "tables[0].source.container"),
    (lambda c: c["tables"][0]["source"].update(path="delta/../etc"), "tables[0].source.path"),
    (lambda c: c["tables"][0].update(lag_threshold_seconds=-1), "tables[0].lag_threshold_seconds"),
    (lambda c: c["tables"][0].update(replicas=[]), "tables[0].replicas"),
    (lambda c: c["tables"][0]["snapshots"].update(replica="nowhere"), "tables[0].snapshots.replica"),
    (lambda c: c["tables"][0].update(colour="blue"), "tables[0].colour"),
    (lambda c: c["tables"][0]["replicas"][0].update(name="seasia"), "duplicate replica name"),
    (lambda c: c["tables"].append(json.loads(json.dumps(c["tables"][0]))), "duplicate table name"),
])
def test_invalid_config_names_the_field(mutate, expected):
    doc = sample()
    mutate(doc)
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        parse_config(doc)


def test_every_problem_is_reported_at_once():
    doc = sample()
    doc["tables"][0]["source"]["container"] = "X"
    doc["tables"][0]["replicas"][0]["path"] = ""
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert "tables[0].source.container" in str(info.value)
    assert "tables[0].replicas[0].path" in str(info.value)


def test_missing_and_double_settings_explain_what_to_set():
    with pytest.raises(ConfigError, match="set REPLICATION_CONFIG"):
        load_config({})
    with pytest.raises(ConfigError, match="set only one"):
        load_config({"REPLICATION_CONFIG": "{}", "REPLICATION_CONFIG_FILE": "/x"})
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config({"REPLICATION_CONFIG": "{tables"})


def test_connection_string_resolves_without_leaking_the_key():
    settings = resolve_connection("EASTUS_STORAGE", {"EASTUS_STORAGE": CONN})
    assert settings.account_name == "eastus"
    assert settings.blob_service_url == "http://127.0.0.1:10000/eastus"
    assert KEY not in repr(settings)


def test_identity_based_connection_uses_blob_service_uri():
    env = {"WESTEU_STORAGE__blobServiceUri": "https://westeuacct.blob.core.windows.net",
           "WESTEU_STORAGE__credential": "managedidentity", "WESTEU_STORAGE__clientId": "abc"}
    settings = resolve_connection("WESTEU_STORAGE", env)
    assert (settings.account_name, settings.credential_kind, settings.client_id) == ("westeuacct", "managedidentity", "abc")
    assert settings.connection_string is None


def test_undefined_or_malformed_connection_names_setting_not_value():
    with pytest.raises(ConfigError, match="setting WESTEU_STORAGE is not defined"):
        resolve_connection("WESTEU_STORAGE", {})
    bad = f"AccountName=eastus;AccountKey={KEY};garbage"
    with pytest.raises(ConfigError) as info:
        resolve_connection("EASTUS_STORAGE", {"EASTUS_STORAGE": bad})
    assert KEY not in str(info.value)
    with pytest.raises(ConfigError, match="no AccountKey"):
        resolve_connection("EASTUS_STORAGE", {"EASTUS_STORAGE": "AccountName=eastus"})


def test_shipped_example_files_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    config = load_config({"REPLICATION_CONFIG_FILE": str(root / "replication.example.json")})
    assert config.connection_names() == ["EASTUS_STORAGE", "WESTEU_STORAGE", "SEASIA_STORAGE"]
    # The runbook's names: locations named, and priced and routed, by their region.
    assert [(loc.name, loc.region) for loc in config.tables[0].locations] == [
        ("eastus", "eastus"), ("westeu", "westeu"), ("seasia", "seasia")]
    settings = json.loads((root / "local.settings.json.example").read_text())["Values"]
    for name in config.connection_names():
        assert name in settings or f"{name}__blobServiceUri" in settings


def test_locations_carry_regions_and_the_source_is_named_primary_by_default():
    doc = sample()
    doc["tables"][0]["replicas"][0]["region"] = "westeu"
    table = parse_config(doc).tables[0]
    assert table.source.name == "primary"
    assert table.source.region is None
    assert table.location("primary") is table.source
    assert [loc.name for loc in table.locations] == ["primary"] + [r.name for r in table.replicas]
    assert table.replicas[0].region == "westeu"
    doc["tables"][0]["source"]["name"] = "eastus"
    doc["tables"][0]["source"]["region"] = "eastus"
    assert parse_config(doc).tables[0].source.name == "eastus"


def test_bad_region_and_replica_named_like_the_source_are_refused():
    doc = sample()
    doc["tables"][0]["replicas"][0]["region"] = "West Europe"
    doc["tables"][0]["replicas"][1]["name"] = "primary"
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert "tables[0].replicas[0].region" in str(err.value)
    assert "tables[0].replicas[1].name: 'primary' is the source's name" in str(err.value)


def test_a_ca_bundle_alone_is_passed_to_the_clients_without_trusting_the_environment(tmp_path):
    """requests trusting the environment scans it for proxies and netrc on every request; a CA bundle
    alone does not need that, a proxy does. obstore reads no environment: it is given both."""
    from shared.config.settings import object_client_options, transport_options

    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert transport_options({}) == {"use_env_settings": False}
    assert transport_options({"REQUESTS_CA_BUNDLE": str(bundle)}) == {"use_env_settings": False,
                                                                      "connection_verify": str(bundle)}
    assert transport_options({"HTTPS_PROXY": "http://proxy:3128", "REQUESTS_CA_BUNDLE": str(bundle)}) == {}
    assert object_client_options({}) == {}
    assert object_client_options({"HTTP_PROXY": "http://proxy:3128"}) == {}  # an https endpoint: not its proxy
    assert object_client_options({"HTTP_PROXY": "http://proxy:3128"}, scheme="http") == {"proxy_url": "http://proxy:3128"}
    assert object_client_options({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "localhost",
                                  "CURL_CA_BUNDLE": str(bundle)}) == {
        "proxy_url": "http://proxy:3128", "proxy_excludes": "localhost", "root_certificate": bundle.read_text()}
