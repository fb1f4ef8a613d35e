"""`python -m cli cost` on real Azurite: measured bytes per location, snapshots, replicated bytes, prices, plan."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

import pytest
from azure.data.tables import TableServiceClient
from deltalake import DeltaTable

from devtools.azurite import free_port
from shared.cost.prices import GB, load_prices
from shared.cost.transfer import TransferStore
from shared.app.lag_check import check_replication
from shared.health.status import StatusStore
from shared.maintenance.snapshots import maintain_table_snapshots
from shared.app.commit_event import EventDisposition
from tests.support.lake import Lake, batch, build_rich_table
from tests.test_cli import run_cli

CUSTOM_PRICES = {
    "currency": "EUR",
    "storage_per_gb_month": {
        "eastus": {"price": 1.0, "taken": "2026-01-02", "note": "contract"},
        "westeu": {"price": 2.0, "taken": "2026-01-02", "note": "contract"},
        "unknown": {"price": 3.0, "taken": "2026-01-02", "note": "contract"},
    },
    "transfer_per_gb": {"price": 0.5, "taken": "2026-01-02", "note": "contract"},
    "region_aliases": {"westeurope": "westeu"},
}


def _listing(lake: Lake, account: str, prefix: str) -> dict[str, int]:
    cc = lake.clients[account].get_container_client(lake.container)
    return {b.name[len(prefix):]: b.size for b in cc.list_blobs(name_starts_with=prefix)}


def _copied_by_replication(blobs: dict[str, int]) -> int:
    """What replication copied into an empty replica: every blob except the commits it wrote itself,
    `_last_checkpoint` (written, not copied) and its lease."""
    return sum(size for name, size in blobs.items()
               if not (name.startswith("_delta_log/") and name.endswith(".json") and name.count("/") == 1
                       and name[11:31].isdigit())
               and name not in ("_delta_log/_last_checkpoint", "_replication/lease"))


def _expected_live(lake: Lake, account: str, blobs: dict[str, int]) -> int:
    """Live bytes computed independently: deltalake's active files + the log from the last checkpoint on."""
    dt = DeltaTable(lake.uri(), storage_options=lake.options(account))
    prefix = lake.uri() + "/"
    data = sum(blobs[uri[len(prefix):]] for uri in dt.file_uris())
    checkpoint = json.loads(lake.blob_bytes(account, "_delta_log/_last_checkpoint"))["version"]
    log = [n for n in blobs if n.startswith("_delta_log/") and (
        n == "_delta_log/_last_checkpoint" or n == f"_delta_log/{checkpoint:020d}.checkpoint.parquet"
        or (n.endswith(".json") and checkpoint < int(n[11:31]) <= dt.version()))]
    return data + sum(blobs[n] for n in log)


def test_cost_json_measures_each_location_snapshots_and_replicated_bytes(lake, tmp_path):
    table_name = "cost" + uuid.uuid4().hex[:10]  # its own rows in the shared ReplicationTransfer table
    t = lake.config_doc["tables"][0]
    t["name"] = table_name
    t["source"]["region"] = "eastus"
    t["replicas"][0]["region"] = "westeurope"  # priced through the alias
    # seasia has no region: the "unknown" price.
    t["snapshots"] = {"replica": "westeu", "container": lake.container, "path": "snapshots/sales", "keep_last": 2}

    # The known workload: a rich table delivered event by event, then 3 commits the lag check heals.
    build_rich_table(lake, appends=4)
    results = lake.deliver_all(lake.events())
    assert [r.disposition for r in results].count(EventDisposition.HANDLED) >= 10
    by_events = {"westeu": 0, "seasia": 0}
    for r in results:
        for o in r.outcomes:
            by_events[o.replica] += o.bytes + o.log_bytes
    assert by_events["westeu"] > 0 and by_events["seasia"] > 0
    lake.runtime.flush_transfers()  # batched in memory; written every few seconds and at close
    transfer = TransferStore(TableServiceClient.from_connection_string(lake.environ["AzureWebJobsStorage"]))
    recorded = {d.replica: d.total_bytes for d in transfer.list_days(table_name)}
    assert recorded == by_events  # the record is exactly what the outcomes counted
    for i in range(3):
        lake.write(batch(500 + i * 10, 10), partition_by=["region"])
    status = StatusStore(TableServiceClient.from_connection_string(lake.environ["AzureWebJobsStorage"]),
                         table_name=lake.status_table)
    check_replication(lake.runtime, status, None)
    lake.assert_replicas_equal(every_version=False)
    assert maintain_table_snapshots(lake.runtime, lake.runtime.config.table(table_name)).created is not None

    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(CUSTOM_PRICES))
    png = tmp_path / "cost.png"
    result = run_cli(lake, "cost", "--json", "--prices", str(prices), "--png", str(png))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {r["location"]: r for r in report["locations"]}
    assert list(rows) == ["primary", "westeu", "seasia"]
    accounts = {"primary": "eastus", "westeu": "westeu", "seasia": "seasia"}
    price = {"primary": 1.0, "westeu": 2.0, "seasia": 3.0}
    for name, account in accounts.items():
        blobs = _listing(lake, account, f"{lake.table_path}/")
        snapshots = _listing(lake, account, "snapshots/sales/")
        row = rows[name]
        assert row["bytes"]["table"] == sum(blobs.values()), name
        assert row["bytes"]["live"] + row["bytes"]["history"] == sum(blobs.values())
        assert row["bytes"]["live"] == _expected_live(lake, account, blobs), name
        assert row["bytes"]["history"] > 0  # compaction and deletes left removed files behind
        assert row["bytes"]["snapshots"] == sum(snapshots.values())
        assert (row["bytes"]["snapshots"] > 0) == (name == "westeu")
        assert row["files"]["table"] == len(blobs)
        # Replicated: the bytes replication copied in this test (events + the lag check's healing).
        expected_transfer = 0 if name == "primary" else _copied_by_replication(blobs)
        assert row["replicatedBytes30d"] == expected_transfer, name
        if name != "primary":
            assert expected_transfer > by_events[name]  # the lag check's copies were recorded too
        m = row["monthly"]
        assert m["live"] == pytest.approx(row["bytes"]["live"] / GB * price[name], rel=1e-12)
        assert m["history"] == pytest.approx(row["bytes"]["history"] / GB * price[name], rel=1e-12)
        assert m["snapshots"] == pytest.approx(row["bytes"]["snapshots"] / GB * price[name], rel=1e-12)
        assert m["transfer"] == pytest.approx(expected_transfer / GB * 0.5, rel=1e-12)
        assert m["total"] == pytest.approx(m["live"] + m["history"] + m["snapshots"] + m["transfer"], rel=1e-12)
    assert rows["westeu"]["priceRegion"] == "westeu" and rows["seasia"]["priceRegion"] == "unknown"
    regions = {r["region"]: r["monthly"]["total"] for r in report["regions"]}
    assert regions == pytest.approx({"eastus": rows["primary"]["monthly"]["total"],
                                     "westeurope": rows["westeu"]["monthly"]["total"],
                                     "unknown": rows["seasia"]["monthly"]["total"]})
    assert report["currency"] == "EUR"
    assert report["total"]["monthly"]["total"] == pytest.approx(sum(regions.values()))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    text = run_cli(lake, "cost", "--table", table_name, "--prices", str(prices))
    assert text.returncode == 0, text.stderr
    assert f"{table_name:<14} westeu     westeurope" in text.stdout
    assert text.stdout.splitlines()[-2].startswith("total ")


def test_plan_reproduces_the_three_region_example(tmp_path):
    result = run_cli(None, "cost", "--plan", "--size-gb", "1024", "--regions", "eastus,westeu,seasia")
    assert result.returncode == 0, result.stderr
    assert "storage: 18.84 + 20.48 + 23.55 = 62.87 USD/month" in result.stdout
    png = tmp_path / "plan.png"
    as_json = run_cli(None, "cost", "--plan", "--size-gb", "1024", "--regions", "eastus,westeu,seasia",
                      "--daily-change-gb", "10", "--json", "--png", str(png))
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert [r["region"] for r in report["regions"]] == ["eastus", "westeu", "seasia"]
    assert report["total"]["monthly"]["storage"] == pytest.approx(62.8736)
    # 10 GB/day x 30 days x 0.02 to each of the two replicas; none into the primary.
    assert [r["monthly"]["transfer"] for r in report["regions"]] == pytest.approx([0.0, 6.0, 6.0])
    assert report["total"]["monthly"]["total"] == pytest.approx(74.8736)
    assert png.stat().st_size > 1000


def test_default_prices_carry_dates_and_the_supply_your_own_note():
    prices = load_prices()
    assert {k: p.price for k, p in prices.storage.items()} == {
        "eastus": 0.0184, "westus": 0.0184, "westeu": 0.0200, "seasia": 0.0230, "auseast": 0.0210, "unknown": 0.02}
    assert all(p.taken and "contract" in p.note for p in [*prices.storage.values(), prices.transfer])
    assert prices.transfer.price == 0.02


@pytest.mark.parametrize("doc, message", [
    ({**CUSTOM_PRICES, "storage_per_gb_month": {"eastus": {"price": 1, "taken": "2026-01-02"}}},
     "storage_per_gb_month.unknown: required"),
    ({**CUSTOM_PRICES, "transfer_per_gb": {"price": "cheap", "taken": "2026-01-02"}},
     "transfer_per_gb.price: expected a non-negative number, got 'cheap'"),
    ({**CUSTOM_PRICES, "transfer_per_gb": {"price": 0.1, "taken": "last year"}},
     "transfer_per_gb.taken: expected the date the price was taken, YYYY-MM-DD, got 'last year'"),
    ({**CUSTOM_PRICES, "storage": {}}, "storage: unknown field"),
    ("not json {", "not valid JSON"),
])
def test_bad_price_file_is_refused_and_nothing_is_written(tmp_path, doc, message):
    prices = tmp_path / "prices.json"
    prices.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    png = tmp_path / "never.png"
    result = run_cli(None, "cost", "--plan", "--size-gb", "1", "--regions", "eastus", "--prices", str(prices),
                     "--png", str(png))
    assert result.returncode == 2
    assert message in result.stderr and f"price file {prices}" in result.stderr
    assert result.stdout == "" and not png.exists()


@pytest.mark.parametrize("args, message", [
    (["--plan", "--regions", "eastus"], "--plan needs --size-gb and --regions"),
    (["--plan", "--size-gb", "5", "--regions", "eastus,East US"], "'East US' is not a region name"),
    (["--plan", "--size-gb", "5", "--regions", "eastus,eastus"], "name each region once"),
    (["--size-gb", "5"], "are for planning: add --plan"),
    (["--plan", "--size-gb", "-1", "--regions", "eastus"], "zero or more"),
    (["--plan", "--size-gb", "5", "--regions", "eastus", "--prices", "/nonexistent/p.json"], "cannot read it"),
])
def test_bad_cost_arguments_are_refused(args, message):
    result = run_cli(None, "cost", *args)
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""


def test_replicated_bytes_are_written_in_batches_on_a_timer_and_at_close(lake):
    table_name = "batch" + uuid.uuid4().hex[:10]  # its own rows in the shared ReplicationTransfer table
    lake.config_doc["tables"][0]["name"] = table_name
    lake.runtime.transfer_flush_seconds = 3600  # no timer flush during the first part
    transfer = TransferStore(TableServiceClient.from_connection_string(lake.environ["AzureWebJobsStorage"]))
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    for i in range(3):
        lake.write(batch(10 + i * 5, 5), partition_by=["region"])
    results = lake.deliver_all(lake.events())
    expected = {"westeu": [0, 0], "seasia": [0, 0]}
    for r in results:
        for o in r.outcomes:
            expected[o.replica][0] += o.bytes + o.log_bytes
            expected[o.replica][1] += o.files
    assert [r.disposition for r in results].count(EventDisposition.HANDLED) == 4
    assert expected["westeu"][0] > 0 and expected["seasia"][1] >= 4
    assert transfer.list_days(table_name) == []  # four commits, no Table write yet
    lake.runtime.close()  # the runtime's close writes what it holds
    assert {d.replica: [d.total_bytes, d.files] for d in transfer.list_days(table_name)} == expected

    # A host never closes its runtime: the recorder's own thread writes within flush_seconds.
    lake._runtime = None
    lake.runtime.transfer_flush_seconds = 0.05
    lake.write(batch(40, 5), partition_by=["region"])
    (result,) = lake.deliver_all(lake.events(start_after=f"{lake.table_path}/_delta_log/{3:020d}.json"))
    for o in result.outcomes:
        expected[o.replica][0] += o.bytes + o.log_bytes
        expected[o.replica][1] += o.files
    deadline = time.monotonic() + 10
    while (recorded := {d.replica: [d.total_bytes, d.files] for d in transfer.list_days(table_name)}) != expected:
        assert time.monotonic() < deadline, f"the timer never wrote the bytes: {recorded} != {expected}"
        time.sleep(0.05)


def test_concurrent_transfer_adds_are_all_counted(azurite):
    service = TableServiceClient.from_connection_string(azurite.connection_string("devstoreaccount1"))
    store = TransferStore(service, table_name="Transfer" + uuid.uuid4().hex[:12])
    barrier = threading.Barrier(8)
    errors = []

    def add(i: int) -> None:
        try:
            barrier.wait()
            for j in range(6):
                store.add("sales", "westeu", nbytes=1000 + i, log_bytes=j, files=1)
        except Exception as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    try:
        assert errors == []
        (day,) = store.list_days("sales")
        assert (day.bytes, day.log_bytes, day.files) == (6 * sum(1000 + i for i in range(8)), 8 * 15, 48)
        store.add("sales", "westeu", nbytes=5 * GB)  # beyond 32 bits: stored as Int64
        (day,) = store.list_days("sales")
        assert day.bytes == 5 * GB + 6 * sum(1000 + i for i in range(8))
    finally:
        service.delete_table(store._table.table_name)


def test_a_failing_transfer_record_never_fails_replication(azurite, request, caplog):
    lake = Lake(azurite, request.node.name)
    dead = f"http://127.0.0.1:{free_port()}/devstoreaccount1"
    # Only the transfer record's table service is dead: the topology (read per event, the fencing
    # authority) must stay readable, or replication rightly waits for it (retryable).
    from azure.data.tables import TableServiceClient

    from shared.cost.transfer import TransferStore

    lake.runtime._transfer = TransferStore(TableServiceClient.from_connection_string(
        azurite.connection_string("devstoreaccount1").replace(
            f"TableEndpoint=http://127.0.0.1:{azurite.table_port}/devstoreaccount1", f"TableEndpoint={dead}"),
        retry_total=0, connection_timeout=2))
    try:
        caplog.set_level(logging.WARNING, logger="shared.cost.transfer")
        lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
        lake.write(batch(5, 5), partition_by=["region"])
        results = lake.deliver_all(lake.events())
        assert all(o.error is None for r in results for o in r.outcomes)
        lake.assert_replicas_equal()
        lake.runtime.flush_transfers()
        failures = [r for r in caplog.records if r.getMessage().startswith("transfer.not_recorded")]
        assert len(failures) >= 2 and all(r.levelno == logging.WARNING for r in failures)
        assert not any("AccountKey" in r.getMessage() for r in caplog.records)
    finally:
        lake.close()
