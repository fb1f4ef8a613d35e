"""Consolidation: regional tables merged into a global table exactly once (txn bookkeeping), on Azurite."""

from __future__ import annotations

import pytest

from tests.support.regions import REGIONS, Regions, orders


@pytest.fixture
def regions(azurite, request):
    regions = Regions(azurite, request.node.name)
    yield regions
    regions.close()


def expected_keys(written: dict[str, set[int]]) -> list[tuple]:
    return sorted((region, i) for region, ids in written.items() for i in ids)


def test_interleaved_runs_hold_exactly_one_row_per_key_and_a_quiet_rerun_commits_nothing(regions):
    written = {r: set() for r in REGIONS}

    def write(region, ids):
        regions.write(region, orders(region, ids))
        written[region] |= set(ids)

    # Overlapping transaction ids across regions; ids repeated across commits and runs.
    for region in REGIONS:
        write(region, range(0, 10))
    first = regions.run()
    assert {s: o.status for s, o in first.items()} == {r: "up_to_date" for r in REGIONS}
    assert {s: o.rows_inserted for s, o in first.items()} == {r: 10 for r in REGIONS}
    write("eastus", range(5, 15))  # 5..9 again: already in the global table
    write("westeu", range(10, 12))
    write("westeu", range(11, 13))  # 11 twice within one run
    second = regions.run()
    assert second["eastus"].rows_inserted == 5 and second["westeu"].rows_inserted == 3
    assert second["seasia"].rows_inserted == 0 and second["seasia"].target_commits == 0
    write("seasia", range(0, 3))  # only duplicates
    third = regions.run()
    assert third["seasia"].rows_inserted == 0 and third["seasia"].target_commits == 1  # the txn alone
    assert regions.txn("seasia") == regions.table("seasia").version()
    assert regions.global_keys() == expected_keys(written)
    assert len(regions.global_keys()) == len(set(regions.global_keys()))

    version = regions.target_version()
    again = regions.run()
    assert regions.target_version() == version, "a run with nothing new committed something"
    assert all(o.rows_inserted == 0 and o.target_commits == 0 and o.commits_read == 0 for o in again.values())
    assert {r: regions.txn(r) for r in REGIONS} == {r: regions.table(r).version() for r in REGIONS}
    rows = {row.source: row for row in regions.status.list_rows(consolidation=regions.name)}
    assert {s: (r.last_merged_version, r.versions_behind, r.status) for s, r in rows.items()} == \
        {r: (regions.table(r).version(), 0, "up_to_date") for r in REGIONS}


# -- configuration ----------------------------------------------------------------------

def test_bad_consolidation_config_names_every_field_and_builds_nothing():
    from shared.config.parse import parse_config
    from shared.errors import ConfigError

    doc = {"tables": [{"name": "sales", "source": {"connection": "EASTUS_STORAGE", "container": "abc", "path": "s"},
                       "replicas": [{"name": "w", "connection": "WESTEU_STORAGE", "container": "abc", "path": "s"}]}],
           "consolidations": [{
               "name": "global", "sources": ["sales", "nosuch", {"connection": "X", "container": "abc", "path": "p"}],
               "target": {"connection": "G", "container": "abc", "path": "g"}, "keys": ["id", "id"],
               "on_match": "upsert", "max_commits_per_run": 0, "region_column": "1bad", "extra": 1}]}
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    message = str(info.value)
    for expected in (
        "consolidations[0].sources[0]: table 'sales' has no region on its source; set tables[0].source.region",
        "consolidations[0].sources[1]: names no configured table ('nosuch')",
        "consolidations[0].sources[2].region: expected the source's region",
        "consolidations[0].target.region: expected the region of the global table",
        "consolidations[0].keys: lists a column twice",
        "consolidations[0].on_match: expected 'ignore' (insert-only) or 'update', got 'upsert'",
        "consolidations[0].max_commits_per_run: expected a positive whole number, got 0",
        "consolidations[0].region_column: expected a column name, got '1bad'",
        "consolidations[0].extra: unknown field",
    ):
        assert expected in message


def test_a_configured_table_is_a_source_with_its_region(azurite, request):
    doc_table = {"name": "orders_us", "source": {"connection": "EASTUS_STORAGE", "container": "cfgtest",
                                                 "path": "orders", "region": "eastus"},
                 "replicas": [{"name": "w", "connection": "WESTEU_STORAGE", "container": "cfgtest", "path": "orders"}]}
    from shared.config.parse import parse_config

    config = parse_config({"tables": [doc_table], "consolidations": [{
        "name": "g", "sources": ["orders_us"], "keys": ["transaction_id"],
        "target": {"connection": "GLOBAL_STORAGE", "container": "cfgtest", "path": "g", "region": "global"}}]})
    (source,) = config.consolidation("g").sources
    assert (source.name, source.table, source.region, source.location.path) == ("orders_us", "orders_us", "eastus",
                                                                                 "orders")
    assert config.consolidation("g").app_id(source) == "g/orders_us"


# -- what is carried, what is not ----------------------------------------------------------

@pytest.fixture
def one_region(azurite, request):
    def build(on_match):
        regions = Regions(azurite, request.node.name + on_match, overrides={"on_match": on_match}, sources=[
            {"connection": "EASTUS_STORAGE", "container": "", "path": "orders", "region": "eastus"}])
        regions.config_doc["consolidations"][0]["sources"][0]["container"] = regions.container
        built.append(regions)
        return regions

    built = []
    yield build
    for regions in built:
        regions.close()


@pytest.mark.parametrize("on_match", ["ignore", "update"])
def test_compaction_changes_nothing_and_an_update_arrives_only_with_on_match_update(one_region, on_match):
    regions = one_region(on_match)
    regions.write("eastus", orders("eastus", range(0, 5)))
    regions.write("eastus", orders("eastus", range(5, 10)))
    regions.run()
    before = regions.global_rows()
    regions.table("eastus").optimize.compact()
    compacted = regions.run()["eastus"]
    assert compacted.rows_read == 0 and compacted.rows_inserted == compacted.rows_updated == 0
    assert regions.global_rows() == before
    regions.table("eastus").update(updates={"amount": "amount + 1000"}, predicate="transaction_id = 3")
    updated = regions.run()["eastus"]
    amounts = {r["transaction_id"]: r["amount"] for r in regions.global_rows()}
    if on_match == "update":
        assert amounts[3] == 1003.0 and updated.rows_updated >= 1
    else:
        assert amounts[3] == 3.0 and updated.rows_updated == 0
    assert {i: a for i, a in amounts.items() if i != 3} == {i: float(i) for i in range(10) if i != 3}
    assert len(regions.global_keys()) == 10
    assert regions.txn("eastus") == regions.table("eastus").version()


def test_a_source_vacuumed_past_the_position_falls_back_to_its_snapshot_without_duplicates(regions, caplog):
    for region in REGIONS:
        regions.write(region, orders(region, range(0, 5)))
    regions.run()
    regions.write("westeu", orders("westeu", range(5, 10)))
    regions.write("westeu", orders("westeu", range(10, 12)))
    table = regions.table("westeu")
    table.optimize.compact()
    table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    caplog.set_level("WARNING")
    outcome = regions.run()["westeu"]
    assert outcome.fallback and outcome.status == "up_to_date"
    assert any("consolidation.fallback_snapshot" in r.getMessage() and "source=westeu" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")
    assert regions.txn("westeu") == regions.table("westeu").version()
    keys = regions.global_keys()
    assert keys == sorted([("eastus", i) for i in range(5)] + [("seasia", i) for i in range(5)]
                          + [("westeu", i) for i in range(12)])
    assert regions.run()["westeu"].commits_read == 0  # back on the incremental path


# -- deletion vectors --------------------------------------------------------------------

def z85_encode(data: bytes) -> str:
    from shared.delta.log import _Z85

    out = []
    for i in range(0, len(data), 4):
        value = int.from_bytes(data[i:i + 4], "big")
        chunk = []
        for _ in range(5):
            value, rem = divmod(value, 85)
            chunk.append(_Z85[rem])
        out.append("".join(reversed(chunk)))
    return "".join(out)


def bitmap_array(rows: list[int]) -> bytes:
    """A RoaringBitmapArray of small row indexes: one 32-bit bitmap, one array container (no-run cookie)."""
    import struct

    body = struct.pack("<II", 12346, 1) + struct.pack("<HH", 0, len(rows) - 1) + struct.pack("<I", 16)
    body += struct.pack(f"<{len(rows)}H", *rows)
    data = struct.pack("<iq", 1681511377, 1) + struct.pack("<I", 0) + body
    return data + b"\0" * (-len(data) % 4)


def test_deletion_vectors_decode_array_bitmap_and_run_containers():
    import struct

    from shared.consolidation.deletion_vectors import decode_bitmap_array

    assert decode_bitmap_array(bitmap_array([1, 3, 7])).tolist() == [1, 3, 7]
    run = struct.pack("<I", 12347) + struct.pack("<B", 1) + struct.pack("<HH", 2, 5) + struct.pack("<HHH", 1, 10, 5)
    data = struct.pack("<iq", 1681511377, 1) + struct.pack("<I", 1) + run
    assert decode_bitmap_array(data).tolist() == [(1 << 32) + (2 << 16) + v for v in range(10, 16)]


def test_rows_a_deletion_vector_deletes_are_not_merged_and_a_dv_only_re_add_merges_nothing(one_region):
    import io
    import json

    import pyarrow.parquet as pq

    regions = one_region("ignore")
    regions.write("eastus", orders("eastus", range(0, 3)))
    regions.run()
    # A writer with deletion vectors adds a file of 5 rows whose rows 1 and 3 are deleted.
    buf = io.BytesIO()
    pq.write_table(orders("eastus", range(100, 105)), buf)
    blob = f"orders/part-dv-{regions.name}.parquet"
    container = regions.clients["eastus"].get_container_client(regions.container)
    container.upload_blob(blob, buf.getvalue())
    dv = {"storageType": "i", "pathOrInlineDv": z85_encode(bitmap_array([1, 3])), "sizeInBytes": 36,
          "cardinality": 2}
    add = {"path": blob.split("/", 1)[1], "partitionValues": {}, "size": len(buf.getvalue()),
           "modificationTime": 0, "dataChange": True, "deletionVector": dv}
    commit = "\n".join(json.dumps(a) for a in [{"commitInfo": {"operation": "WRITE"}}, {"add": add}])
    container.upload_blob("orders/_delta_log/00000000000000000001.json", commit.encode())
    outcome = regions.run()["eastus"]
    assert outcome.rows_inserted == 3
    assert sorted(r["transaction_id"] for r in regions.global_rows()) == [0, 1, 2, 100, 102, 104]
    # Deleting row 0 too rewrites the DV: remove + add of the same file. It introduces no rows.
    dv2 = dict(dv, pathOrInlineDv=z85_encode(bitmap_array([0, 1, 3])), cardinality=3)
    actions = [{"remove": {"path": add["path"], "dataChange": True, "deletionVector": dv}},
               {"add": dict(add, deletionVector=dv2)}]
    container.upload_blob("orders/_delta_log/00000000000000000002.json",
                          "\n".join(json.dumps(a) for a in actions).encode())
    again = regions.run()["eastus"]
    assert again.rows_read == 0 and again.merged_version == 2
    assert sorted(r["transaction_id"] for r in regions.global_rows()) == [0, 1, 2, 100, 102, 104]


# -- triggers --------------------------------------------------------------------------

def test_timer_function_status_endpoint_and_cli_report_each_source(regions, monkeypatch):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import azure.functions as func
    from azure.functions.timer import TimerRequest

    from functions.consolidate_regions import consolidate_regions
    from functions.replication_status import replication_status
    from shared import runtime as runtime_module

    for region in REGIONS:
        regions.write(region, orders(region, range(0, 4)))
    env = dict(regions.environ, REPLICATION_CONFIG=json.dumps(regions.config_doc))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ALERT_TOPIC_ENDPOINT", raising=False)
    runtime_module.reset_runtime()
    try:
        consolidate_regions(TimerRequest(past_due=False))
        assert len(regions.global_keys()) == 12
        response = replication_status(func.HttpRequest("GET", "http://localhost:7071/api/status", body=b""))
        body = json.loads(response.get_body())
        assert response.status_code == 200 and body["replicas"] == []
        mine = {r["source"]: r for r in body["consolidations"] if r["consolidation"] == regions.name}
        assert {s: (r["lastMergedVersion"], r["rowsMergedLastRun"], r["status"]) for s, r in mine.items()} == \
            {r: (0, 4, "up_to_date") for r in REGIONS}
    finally:
        runtime_module.reset_runtime()

    regions.write("seasia", orders("seasia", range(4, 6)))
    cli_env = {k: v for k, v in os.environ.items() if not k.endswith("_STORAGE")}
    cli_env.update(env)
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-m", "cli", "consolidate", "--name", regions.name, "--json"], cwd=repo,
                            env=cli_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    sources = {s["source"]: s for s in json.loads(result.stdout)["sources"]}
    assert (sources["seasia"]["rows_inserted"], sources["seasia"]["merged_version"]) == (2, 1)
    assert sources["eastus"]["rows_inserted"] == 0 and sources["eastus"]["commits_read"] == 0
    status = subprocess.run([sys.executable, "-m", "cli", "status"], cwd=repo, env=cli_env, capture_output=True,
                            text=True, timeout=300)
    lines = [line.split() for line in status.stdout.splitlines() if line.startswith(regions.name)]
    assert sorted((cols[1], cols[2], cols[5], cols[6]) for cols in lines) == \
        [("eastus", "0", "0", "up_to_date"), ("seasia", "1", "2", "up_to_date"), ("westeu", "0", "0", "up_to_date")]
    missing = subprocess.run([sys.executable, "-m", "cli", "consolidate", "--name", "nosuch"], cwd=repo, env=cli_env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "consolidation 'nosuch' is not configured" in missing.stderr
