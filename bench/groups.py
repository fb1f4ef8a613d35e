"""Groups at scale (issue 25): one host, one group of 1,000 small tables, two replicas.

Measures: the first lag check (it finds and replicates every table), an idle lag check (nothing
changed: its time, and the storage requests it sends per table and replica, blob and table service
alike), the same after one table got a commit without an event, routing an event (time per event
for the first and the last table found), and the host's memory per known table. Writes
bench/out/groups.json and bench/groups_results.md (bench.report includes it in RESULTS.md).

    python -m bench.groups [--tables N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from azure.storage.blob import BlobServiceClient
from deltalake import write_deltalake

from bench.network import storage_client
from devtools.azurite import AzuriteProcess
from devtools.events import blob_created_event
from shared.app.lag_check import check_replication
from shared.config.parse import parse_config
from shared.health.status import StatusStore
from shared.replication.events import parse_event, route_event
from shared.runtime import ReplicationRuntime
from shared.storage.clients import RequestCounter

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
REPLICAS = ("westeu", "seasia")


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_tables(az: AzuriteProcess, container: str, count: int) -> list[str]:
    """`count` one-commit tables under `lake/`: one written by deltalake, the rest copies of its commit and
    file (each a valid table of its own), uploaded in parallel."""
    import pyarrow as pa

    client = BlobServiceClient.from_connection_string(az.connection_string("eastus"))
    client.create_container(container)
    cc = client.get_container_client(container)
    write_deltalake(f"az://{container}/template", pa.table({"id": [1, 2, 3]}), storage_options=az.storage_options("eastus"))
    commit = cc.download_blob(f"template/_delta_log/{0:020d}.json").readall()
    data = [b for b in cc.list_blobs(name_starts_with="template/") if b.name.endswith(".parquet")][0]
    parquet = cc.download_blob(data.name).readall()
    file_name = data.name.split("/", 1)[1]
    relatives = [f"db{i % 25:02d}/t{i:04d}" for i in range(count)]

    def make(relative: str) -> None:
        cc.upload_blob(f"lake/{relative}/{file_name}", parquet, overwrite=False)
        cc.upload_blob(f"lake/{relative}/_delta_log/{0:020d}.json", commit, overwrite=False)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(make, relatives))
    return relatives


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tables", type=int, default=1000)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                 "python": platform.python_version()}, "tables": args.tables,
                     "replicas": len(REPLICAS)}
    with AzuriteProcess(("eastus", *REPLICAS), with_table=True) as az:
        container = "grp" + uuid.uuid4().hex[:8]
        started = time.perf_counter()
        relatives = build_tables(az, container, args.tables)
        results["build_seconds"] = round(time.perf_counter() - started, 1)
        for account in REPLICAS:
            BlobServiceClient.from_connection_string(az.connection_string(account)).create_container(container)
        doc = {"groups": [{"name": "lake",
                           "source": {"name": "eastus", "connection": "EASTUS_STORAGE", "container": container,
                                      "prefix": "lake"},
                           "replicas": [{"name": a, "connection": f"{a.upper()}_STORAGE", "container": container,
                                         "prefix": "lake"} for a in REPLICAS]}]}
        environ = {"AzureWebJobsStorage": az.connection_string("devstoreaccount1"),
                   **{f"{a.upper()}_STORAGE": az.connection_string(a) for a in ("eastus", *REPLICAS)},
                   "STORAGE_CLIENT": storage_client()}
        counter = RequestCounter()
        baseline = rss_mib()
        runtime = ReplicationRuntime(parse_config(doc), environ, counter=counter)
        status = StatusStore(runtime.table_service(), table_name="Grp" + uuid.uuid4().hex[:10])

        def check(label: str) -> dict:
            counter.reset()
            cpu, wall = time.process_time(), time.perf_counter()
            measured = check_replication(runtime, status, None)
            row = {"seconds": round(time.perf_counter() - wall, 2), "cpu_seconds": round(time.process_time() - cpu, 2),
                   "requests": counter.count, "by_method": dict(counter.by_method),
                   "requests_per_table_and_replica": round(counter.count / (args.tables * len(REPLICAS)), 2),
                   "healthy": sum(m.status.value == "healthy" for m in measured), "measured": len(measured)}
            print(f"{label}: {json.dumps(row)}", flush=True)
            return row

        results["first_check"] = check("first check (finds and replicates every table)")
        results["rss_after_first_mib"] = round(rss_mib() - baseline, 1)
        results["idle_check"] = check("idle check")
        client = BlobServiceClient.from_connection_string(az.connection_string("eastus")).get_container_client(container)
        one = relatives[len(relatives) // 2]
        # A commit holding only commitInfo (a valid no-op commit), with no event: the next check must see it.
        client.upload_blob(f"lake/{one}/_delta_log/{1:020d}.json",
                           b'{"commitInfo":{"timestamp":%d,"operation":"WRITE"}}\n' % int(time.time() * 1000),
                           overwrite=False)
        results["one_changed_check"] = check("one table changed without an event")
        # Routing: an event for the first and for the last table, 2,000 routes each.
        source_accounts = runtime.source_accounts
        timings = {}
        for which, relative in (("first", relatives[0]), ("last", relatives[-1])):
            event = parse_event(blob_created_event("eastus", container, f"lake/{relative}/_delta_log/{1:020d}.json",
                                                   azurite_port=az.port))
            started = time.perf_counter()
            for _ in range(2000):
                route_event(event, runtime.config, source_accounts)
            timings[which] = round((time.perf_counter() - started) / 2000 * 1e6, 1)
        results["route_event_us"] = timings
        results["rss_total_mib"] = round(rss_mib() - baseline, 1)
        results["rss_per_table_kib"] = round(results["rss_total_mib"] * 1024 / args.tables, 1)
        runtime.close()
    (OUT / "groups.json").write_text(json.dumps(results, indent=1))
    (HERE / "groups_results.md").write_text(render(results))
    print(render(results))
    return 0


def render(r: dict) -> str:
    first, idle, one = r["first_check"], r["idle_check"], r["one_changed_check"]
    return "\n".join([
        "## Groups at scale (issue 25)", "",
        f"`python -m bench.groups`: one group of {r['tables']} one-commit tables under one prefix, "
        f"{r['replicas']} replicas, one host process, one Azurite ({r['machine']['platform']}, "
        f"{r['machine']['cpus']} CPUs). Requests: every HTTP request the host sent, blob and table service.", "",
        "| lag check | seconds | CPU seconds | requests | per table and replica | healthy |",
        "|---|---:|---:|---:|---:|---:|",
        f"| first (finds and replicates every table) | {first['seconds']} | {first['cpu_seconds']} | "
        f"{first['requests']} | {first['requests_per_table_and_replica']} | {first['healthy']} of {first['measured']} |",
        f"| idle (nothing changed) | {idle['seconds']} | {idle['cpu_seconds']} | {idle['requests']} | "
        f"{idle['requests_per_table_and_replica']} | {idle['healthy']} of {idle['measured']} |",
        f"| one table got a commit without an event | {one['seconds']} | {one['cpu_seconds']} | {one['requests']} | "
        f"{one['requests_per_table_and_replica']} | {one['healthy']} of {one['measured']} |", "",
        f"- Idle check's requests by method: {idle['by_method']}.",
        f"- Routing an event: {r['route_event_us']['first']} µs for the first table, {r['route_event_us']['last']} µs "
        "for the last (it looks at the group's prefix, not at the tables).",
        f"- Host memory after the checks: {r['rss_total_mib']} MiB above the runtime's start, "
        f"{r['rss_per_table_kib']} KiB per table (its catalog record, replicator and stores; nothing per version).",
        f"- Targets: idle check <= 30 s: {idle['seconds']} s ({'met' if idle['seconds'] <= 30 else 'not met'}); "
        f"<= 3 requests per idle table and replica: {idle['requests_per_table_and_replica']} "
        f"({'met' if idle['requests_per_table_and_replica'] <= 3 else 'not met'}).", ""])


if __name__ == "__main__":
    raise SystemExit(main())
