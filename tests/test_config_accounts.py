"""Locations are compared by account: two connection names for one account cannot hide a replica that
is another table's source, a replica inside its own source, or a global table inside a source."""

from __future__ import annotations

import pytest

from shared.config.parse import parse_config
from shared.errors import ConfigError
from shared.runtime import ReplicationRuntime

KEY = "a2V5" * 22


def conn(account: str) -> str:
    return f"DefaultEndpointsProtocol=https;AccountName={account};AccountKey={KEY};EndpointSuffix=core.windows.net"


ENV = {"EAST": conn("east"), "EAST_AGAIN": "BlobEndpoint=https://east.blob.core.windows.net/;SharedAccessSignature=sv=x",
       "EAST_IDENTITY__blobServiceUri": "https://EAST.blob.core.windows.net", "WEST": conn("west"),
       "GLOBAL": conn("global")}


def loc(connection, path, **extra):
    return {"connection": connection, "container": "lake", "path": path, **extra}


def build(doc):
    return ReplicationRuntime(parse_config(doc), ENV)


def test_a_replica_that_is_another_tables_source_is_refused_naming_both_fields():
    doc = {"tables": [
        {"name": "a", "source": loc("EAST", "a"), "replicas": [dict(loc("WEST", "a"), name="w")]},
        {"name": "b", "source": loc("WEST", "b"), "replicas": [dict(loc("EAST_AGAIN", "a"), name="e")]}]}
    with pytest.raises(ConfigError) as info:
        build(doc)
    assert "tables[0].source: the source lake/a is the same location as tables[1].replicas[0]" in str(info.value)
    assert KEY not in str(info.value) and "sv=x" not in str(info.value)


def test_a_replica_inside_its_own_source_under_another_connection_name_is_refused():
    doc = {"tables": [{"name": "a", "source": loc("EAST", "a"),
                       "replicas": [dict(loc("EAST_IDENTITY", "a/copy"), name="w")]}]}
    with pytest.raises(ConfigError, match=r"tables\[0\].source: the source lake/a is nested with tables\[0\].replicas\[0\]"):
        build(doc)


def test_a_global_table_inside_a_source_or_a_replica_is_refused():
    table = {"name": "a", "source": loc("EAST", "a", region="east"), "replicas": [dict(loc("WEST", "a"), name="w")]}
    for target, other in ((loc("EAST_AGAIN", "a/global", region="global"), "tables[0].source"),
                          (loc("WEST", "a", region="global"), "tables[0].replicas[0]")):
        doc = {"tables": [table], "consolidations": [{"name": "c", "sources": ["a"], "target": target, "keys": ["id"]}]}
        with pytest.raises(ConfigError) as info:
            build(doc)
        assert other in str(info.value) and "consolidations[0].target" in str(info.value)


def test_separate_accounts_and_sibling_paths_are_accepted():
    doc = {"tables": [
        {"name": "a", "source": loc("EAST", "a", region="east"), "replicas": [dict(loc("WEST", "a"), name="w")]},
        {"name": "b", "source": loc("EAST_AGAIN", "ab"), "replicas": [dict(loc("WEST", "b"), name="w")]}],
        "consolidations": [{"name": "c", "sources": ["a", loc("EAST", "a", region="east", name="again")],
                            "target": loc("GLOBAL", "a", region="global"), "keys": ["id"]}]}
    build(doc).close()
