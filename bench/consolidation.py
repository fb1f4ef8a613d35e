"""Consolidation benchmark: python -m bench.consolidation [--sizes 10,100,1000] [--quick].

Three regional tables (eastus grows; westeu and seasia stay small) and a global table on a
private Azurite. At each size of the growing table: time and source bytes of one
consolidation run after one new regional commit, against the full recipe (read every
regional table in full with deltalake, union, MERGE WHEN NOT MATCHED INSERT). Then the
peak memory of consolidating a backlog of every commit into a fresh target, in a
subprocess. Prints a summary and writes bench/out/consolidation.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from devtools.azurite import AzuriteProcess
from shared.config.parse import parse_config
from shared.runtime import ReplicationRuntime

OUT = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parent.parent
REGIONS = ("eastus", "westeu", "seasia")
ROWS_PER_COMMIT = 20
PAYLOAD = 512  # bytes of text per row, so a 1,000-commit backlog is ~10 MB of rows


def orders(start: int, n: int = ROWS_PER_COMMIT) -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table({"transaction_id": pa.array(ids, pa.int64()), "amount": [float(i) for i in ids],
                     "note": [f"{i:08d}" * (PAYLOAD // 8) for i in ids]})


def config(container: str, target: str, *, max_commits: int, max_bytes: int, name: str) -> dict:
    return {"consolidations": [{
        "name": name, "keys": ["transaction_id", "source_region"], "max_commits_per_run": max_commits,
        "max_merge_bytes": max_bytes,
        "sources": [{"connection": f"{r.upper()}_STORAGE", "container": container, "path": "orders", "region": r}
                    for r in REGIONS],
        "target": {"connection": "GLOBAL_STORAGE", "container": container, "path": target, "region": "global"},
    }]}


class Bench:
    def __init__(self, az: AzuriteProcess) -> None:
        from azure.storage.blob import BlobServiceClient

        self.az = az
        self.container = f"cons-{uuid.uuid4().hex[:10]}"
        self.env = {"AzureWebJobsStorage": az.connection_string("devstoreaccount1")}
        for account in (*REGIONS, "global"):
            self.env[f"{account.upper()}_STORAGE"] = az.connection_string(account)
            BlobServiceClient.from_connection_string(self.env[f"{account.upper()}_STORAGE"]).create_container(self.container)
        self.next_id = {r: 0 for r in REGIONS}
        self.commits = {r: 0 for r in REGIONS}
        self.tables: dict[str, DeltaTable] = {}

    def uri(self, path: str = "orders") -> str:
        return f"az://{self.container}/{path}"

    def write(self, region: str) -> None:
        # Writing through one DeltaTable object: the writer does not re-read the log each commit.
        table = self.tables.get(region)
        write_deltalake(table if table is not None else self.uri(), orders(self.next_id[region]), mode="append",
                        storage_options=self.az.storage_options(region))
        if table is None:
            self.tables[region] = DeltaTable(self.uri(), storage_options=self.az.storage_options(region))
        else:
            table.update_incremental()
        # Every fifth commit repeats ids of the previous one: duplicates across commits.
        self.next_id[region] += ROWS_PER_COMMIT if self.commits[region] % 5 else ROWS_PER_COMMIT // 2
        self.commits[region] += 1

    def grow(self, region: str, size: int) -> None:
        """Bring a regional table to `size` commits quickly: the same add-only commits deltalake's
        append writes (one parquet file, one commit), uploaded directly, then a checkpoint as
        deltalake's writer leaves one every 100 commits (the full recipe's read benefits)."""
        import io

        import pyarrow.parquet as pq
        from azure.storage.blob import BlobServiceClient

        if self.commits[region] == 0:
            self.write(region)
        container = BlobServiceClient.from_connection_string(
            self.env[f"{region.upper()}_STORAGE"]).get_container_client(self.container)
        while self.commits[region] < size:
            data = orders(self.next_id[region])
            buf = io.BytesIO()
            pq.write_table(data, buf)
            name = f"part-{uuid.uuid4()}.parquet"
            container.upload_blob(f"orders/{name}", buf.getvalue())
            ids = data.column("transaction_id").to_pylist()
            stats = {"numRecords": data.num_rows, "minValues": {"transaction_id": min(ids)},
                     "maxValues": {"transaction_id": max(ids)}, "nullCount": {"transaction_id": 0}}
            actions = [{"commitInfo": {"timestamp": int(time.time() * 1000), "operation": "WRITE",
                                       "operationParameters": {"mode": "Append"}}},
                       {"add": {"path": name, "partitionValues": {}, "size": len(buf.getvalue()),
                                "modificationTime": int(time.time() * 1000), "dataChange": True,
                                "stats": json.dumps(stats)}}]
            container.upload_blob(f"orders/_delta_log/{self.commits[region]:020d}.json",
                                  "\n".join(json.dumps(a) for a in actions).encode())
            self.next_id[region] += ROWS_PER_COMMIT if self.commits[region] % 5 else ROWS_PER_COMMIT // 2
            self.commits[region] += 1
        table = DeltaTable(self.uri(), storage_options=self.az.storage_options(region))
        table.create_checkpoint()
        self.tables[region] = table

    def runtime(self, target: str, **kw) -> ReplicationRuntime:
        return ReplicationRuntime(parse_config(config(self.container, target, **kw)), self.env)

    def full_recipe(self) -> tuple[float, int]:
        """Read every regional table in full, union, MERGE insert-only; returns (seconds, bytes read)."""
        started = time.monotonic()
        parts, read = [], 0
        for region in REGIONS:
            table = DeltaTable(self.uri(), storage_options=self.az.storage_options(region))
            data = table.to_pyarrow_table()
            parts.append(data.append_column("source_region", pa.array([region] * data.num_rows)))
            read += sum(table.get_add_actions(flatten=True).column("size_bytes").to_pylist())
            read += log_bytes(self.az, region, self.container)
        union = pa.concat_tables(parts)
        options = self.az.storage_options("global")
        try:
            target = DeltaTable(self.uri("recipe"), storage_options=options)
        except Exception:  # noqa: BLE001 - first run: the global table does not exist yet
            write_deltalake(self.uri("recipe"), union.schema.empty_table(), storage_options=options)
            target = DeltaTable(self.uri("recipe"), storage_options=options)
        (target.merge(union, predicate="t.transaction_id = s.transaction_id AND t.source_region = s.source_region",
                      source_alias="s", target_alias="t").when_not_matched_insert_all().execute())
        return time.monotonic() - started, read


def log_bytes(az: AzuriteProcess, region: str, container: str) -> int:
    """Bytes of the log a snapshot read needs: the newest checkpoint and the commits after it."""
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(az.connection_string(region))
    blobs = [(b.name.rsplit("/", 1)[1], b.size) for b in
             client.get_container_client(container).list_blobs(name_starts_with="orders/_delta_log/")]
    checkpoints = [int(n[:20]) for n, _ in blobs if ".checkpoint." in n]
    since = max(checkpoints) if checkpoints else -1
    return sum(size for n, size in blobs if n[:20].isdigit() and int(n[:20]) >= since and
               (n.endswith(".json") and int(n[:20]) > since or ".checkpoint." in n))


def run_once(runtime: ReplicationRuntime, status) -> dict:
    from shared.consolidation.run import run_consolidation

    started = time.monotonic()
    outcomes = run_consolidation(runtime, runtime.config.consolidations[0], status, None)
    seconds = time.monotonic() - started
    return {"seconds": seconds, "bytes_read": sum(o.bytes_read for o in outcomes),
            "rows": sum(o.rows_inserted for o in outcomes), "commits_read": sum(o.commits_read for o in outcomes)}


def memory_job(job: dict) -> dict:
    """In a subprocess: consolidate the whole backlog into a fresh target; peak RSS above the baseline."""
    from azure.data.tables import TableServiceClient

    from shared.consolidation.state import ConsolidationStatusStore

    def hwm(field: str) -> float:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) / 1024 for line in fh if line.startswith(field + ":"))

    runtime = ReplicationRuntime(parse_config(job["config"]), job["env"])
    status = ConsolidationStatusStore(TableServiceClient.from_connection_string(job["env"]["AzureWebJobsStorage"]),
                                      table_name="BenchCons" + uuid.uuid4().hex[:8])
    runtime.lease_store()
    baseline = hwm("VmRSS")
    result = run_once(runtime, status)
    result.update(baseline_mib=baseline, peak_mib=hwm("VmHWM"))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.consolidation", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="sizes (commits) of the growing regional table")
    parser.add_argument("--samples", type=int, default=3, help="measured runs per size")
    parser.add_argument("--quick", action="store_true", help="sizes 10,100 and one sample")
    parser.add_argument("--memory-job", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_job:
        print(json.dumps(memory_job(json.loads(sys.stdin.read()))))
        return 0
    sizes = [10, 100] if args.quick else [int(s) for s in args.sizes.split(",")]
    samples = 1 if args.quick else args.samples
    az = AzuriteProcess((*REGIONS, "global"), with_table=True).start()
    try:
        from azure.data.tables import TableServiceClient

        from shared.consolidation.state import ConsolidationStatusStore

        bench = Bench(az)
        status = ConsolidationStatusStore(TableServiceClient.from_connection_string(bench.env["AzureWebJobsStorage"]),
                                          table_name="BenchCons" + uuid.uuid4().hex[:8])
        runtime = bench.runtime("global", max_commits=100, max_bytes=64 << 20, name="bench-incremental")
        for region in ("westeu", "seasia"):
            for _ in range(10):
                bench.write(region)
        results = {"sizes": [], "rows_per_commit": ROWS_PER_COMMIT, "payload_bytes_per_row": PAYLOAD}
        for size in sizes:
            t0 = time.monotonic()
            bench.grow("eastus", size - samples)
            while run_once(runtime, status)["commits_read"]:  # catch up, max_commits_per_run at a time (untimed)
                pass
            print(f"size {size}: table built in {time.monotonic() - t0:.0f}s", flush=True)
            ours, recipe = [], []
            for _ in range(samples):
                bench.write("eastus")
                ours.append(run_once(runtime, status))
                seconds, read = bench.full_recipe()
                recipe.append({"seconds": seconds, "bytes_read": read})
            entry = {
                "commits": bench.commits["eastus"],
                "incremental_seconds": statistics.median(r["seconds"] for r in ours),
                "incremental_bytes": statistics.median(r["bytes_read"] for r in ours),
                "incremental_rows": ours[-1]["rows"],
                "recipe_seconds": statistics.median(r["seconds"] for r in recipe),
                "recipe_bytes": statistics.median(r["bytes_read"] for r in recipe),
            }
            results["sizes"].append(entry)
            print(json.dumps(entry), flush=True)
        runtime.close()
        backlog = bench.commits["eastus"]
        job = {"env": bench.env, "config": config(bench.container, "backlog", max_commits=backlog + 10,
                                                    max_bytes=4 << 20, name="bench-backlog")}
        proc = subprocess.run([sys.executable, "-m", "bench.consolidation", "--memory-job"], cwd=REPO,
                              input=json.dumps(job), capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        memory = json.loads(proc.stdout.strip().splitlines()[-1])
        memory.update(backlog_commits=backlog, max_merge_bytes=4 << 20)
        results["memory"] = memory
        print(json.dumps(memory), flush=True)
        first, last = results["sizes"][0], results["sizes"][-1]
        ratio = last["incremental_seconds"] / first["incremental_seconds"]
        print(f"\nper-run time {last['commits']}/{first['commits']} commits: ours {ratio:.2f} "
              f"(recipe {last['recipe_seconds'] / first['recipe_seconds']:.2f}); bytes read ours "
              f"{first['incremental_bytes']} -> {last['incremental_bytes']}, recipe {first['recipe_bytes']} -> "
              f"{last['recipe_bytes']}; backlog peak {memory['peak_mib'] - memory['baseline_mib']:.0f} MiB above "
              f"baseline")
        OUT.mkdir(exist_ok=True)
        (OUT / "consolidation.json").write_text(json.dumps(results, indent=2))
    finally:
        az.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
