"""Benchmarks against the alternatives: python -m bench [--sizes 10,100,1000] [--sustained-seconds 60].

Starts its own Azurite processes, builds Delta tables with deltalake, and measures, in one run:
- this project: per-commit latency (event delivered -> replica readable at that version),
  storage requests per commit, bytes copied / bytes added, seeding throughput, the memory
  high-water mark of streaming a 1 GiB file, and commit-to-replica lag under sustained load;
- the same commits with the alternatives: rclone sync after each commit, full-table
  rewrite with deltalake, change data feed + MERGE with deltalake, and the floor (copy
  exactly the commit's new files and JSON with direct SDK calls, no logic).
Writes bench/out/results.json and bench/out/per_commit.png, and prints a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
from azure.storage.blob import BlobServiceClient
from deltalake import DeltaTable, write_deltalake

from devtools.azurite import AzuriteProcess, account_key
from devtools.events import blob_created_event
from shared.config.parse import parse_config
from shared.delta.log import parse_commit
from shared.app.commit_event import handle_storage_event
from shared.runtime import ReplicationRuntime
from shared.storage.clients import RequestCounter
from bench.network import storage_client

OUT = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parent.parent
REGIONS = ["north", "south", "east", "west"]


def batch(start: int, n: int = 20) -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table({"id": pa.array(ids, pa.int64()), "region": [REGIONS[i % 4] for i in ids],
                     "amount": [float(i) for i in ids]})


def config_doc(container: str, replica_container: str, path: str = "t") -> dict:
    return {"tables": [{"name": "bench", "source": {"connection": "EASTUS_STORAGE", "container": container, "path": path},
                        "replicas": [{"name": "westeu", "connection": "WESTEU_STORAGE", "container": replica_container,
                                      "path": path}]}]}


class Workload:
    """A primary table in eastus that grows commit by commit, as users write it."""

    def __init__(self, az: AzuriteProcess, container: str) -> None:
        self.az, self.container = az, container
        self.uri = f"az://{container}/t"
        self.options = az.storage_options("eastus")
        self.client = BlobServiceClient.from_connection_string(az.connection_string("eastus"))
        self.client.create_container(container)
        self.version = -1
        self.next_id = 0
        self.step = 0

    def commit(self) -> int:
        """One user commit: mostly appends (one file, one partition), some deletes and updates."""
        before = self.version
        while self.version == before:
            self._operation()  # a delete or update that matches nothing commits nothing: go on
        return self.version

    def _operation(self) -> None:
        v = self.step
        self.step += 1
        if v == 0:
            write_deltalake(self.uri, batch(0), partition_by=["region"], storage_options=self.options,
                            configuration={"delta.checkpointInterval": "10", "delta.enableChangeDataFeed": "true"})
        elif v % 17 == 0:
            DeltaTable(self.uri, storage_options=self.options).delete(f"id = {self.next_id - 7}")
        elif v % 23 == 0:
            DeltaTable(self.uri, storage_options=self.options).update(updates={"amount": "amount + 1"},
                                                                    predicate=f"id = {self.next_id - 3}")
        else:
            data = batch(self.next_id)
            data = data.set_column(1, "region", pa.array([REGIONS[v % 4]] * len(data)))
            write_deltalake(self.uri, data, mode="append", partition_by=["region"], storage_options=self.options)
        self.next_id += 20
        self.version = DeltaTable(self.uri, storage_options=self.options).version()

    def event(self, version: int) -> dict:
        return blob_created_event("eastus", self.container, f"t/_delta_log/{version:020d}.json",
                                  azurite_port=self.az.port)

    def commit_bytes(self, version: int) -> bytes:
        return self.client.get_blob_client(self.container, f"t/_delta_log/{version:020d}.json").download_blob().readall()

    def added_bytes(self, version: int) -> int:
        actions = parse_commit(self.commit_bytes(version), where="bench")
        return sum(a["add"].get("size", 0) for a in actions if "add" in a) + \
            sum(a["cdc"].get("size", 0) for a in actions if "cdc" in a) + len(self.commit_bytes(version))


def floor_copy(work: Workload, dst: BlobServiceClient, container: str, version: int) -> float:
    """The floor: copy the commit's new files, then its JSON, with direct SDK calls and no logic."""
    from urllib.parse import unquote

    started = time.perf_counter()
    data = work.commit_bytes(version)
    src = work.client
    for action in parse_commit(data, where="floor"):
        for key in ("add", "cdc"):
            if key in action:
                path = "t/" + unquote(action[key]["path"])
                body = src.get_blob_client(work.container, path).download_blob().readall()
                dst.get_blob_client(container, path).upload_blob(body, overwrite=True)
    dst.get_blob_client(container, f"t/_delta_log/{version:020d}.json").upload_blob(data, overwrite=True)
    return time.perf_counter() - started


def _container_sas_url(az: AzuriteProcess, account: str, container: str) -> str:
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    client = BlobServiceClient.from_connection_string(az.connection_string(account))
    try:
        client.create_container(container)
    except Exception:  # noqa: BLE001 - already there
        pass
    sas = generate_container_sas(account, container, account_key=account_key(account),
                                 permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True,
                                                                    add=True, create=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=2))
    return f"{az.endpoint(account)}/{container}?{sas}"


def rclone(az: AzuriteProcess, verb: str, src: str, dst: str) -> float:
    """rclone between two Azurite accounts; container SAS URLs keep it on loopback, path-style."""
    env = dict(os.environ)
    (src_container, src_path), (dst_container, dst_path) = src.split("/", 1), dst.split("/", 1)
    for name, account, container in (("SRC", "eastus", src_container), ("DST", "westeu", dst_container)):
        env[f"RCLONE_CONFIG_{name}_TYPE"] = "azureblob"
        env[f"RCLONE_CONFIG_{name}_SAS_URL"] = _container_sas_url(az, account, container)
    started = time.perf_counter()
    subprocess.run(["rclone", verb, f"SRC:{src_container}/{src_path}", f"DST:{dst_container}/{dst_path}",
                    "--transfers", "16", "--checkers", "16"], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def full_rewrite(work: Workload, az: AzuriteProcess, container: str) -> float:
    started = time.perf_counter()
    data = DeltaTable(work.uri, storage_options=work.options).to_pyarrow_table()
    write_deltalake(f"az://{container}/t", data, mode="overwrite", partition_by=["region"],
                    storage_options=az.storage_options("westeu"))
    return time.perf_counter() - started


class CdfMerge:
    """Change data feed since the last applied version, MERGEd into the replica by id."""

    def __init__(self, work: Workload, az: AzuriteProcess, container: str) -> None:
        self.work, self.uri, self.options = work, f"az://{container}/t", az.storage_options("westeu")
        BlobServiceClient.from_connection_string(az.connection_string("westeu")).create_container(container)
        data = DeltaTable(work.uri, storage_options=work.options).to_pyarrow_table()
        write_deltalake(self.uri, data, mode="overwrite", partition_by=["region"], storage_options=self.options)
        self.applied = work.version

    def apply(self) -> float:
        started = time.perf_counter()
        source = DeltaTable(self.work.uri, storage_options=self.work.options)
        changes = pa.RecordBatchReader.from_stream(source.load_cdf(starting_version=self.applied + 1)).read_all()
        if changes.num_rows:
            rows = changes.select(["id", "region", "amount", "_change_type"]).to_pylist()
            upserts = [r for r in rows if r["_change_type"] in ("insert", "update_postimage")]
            deletes = [r["id"] for r in rows if r["_change_type"] == "delete"]
            if upserts:
                data = pa.table({"id": pa.array([r["id"] for r in upserts], pa.int64()),
                                 "region": [r["region"] for r in upserts],
                                 "amount": [r["amount"] for r in upserts]})
                (DeltaTable(self.uri, storage_options=self.options)
                    .merge(data, predicate="t.id = s.id", source_alias="s", target_alias="t")
                    .when_matched_update_all().when_not_matched_insert_all().execute())
            if deletes:
                ids = ",".join(str(i) for i in deletes)
                DeltaTable(self.uri, storage_options=self.options).delete(f"id IN ({ids})")
        self.applied = source.version()
        return time.perf_counter() - started


def measure_scaling(az: AzuriteProcess, sizes: list[int], samples: int) -> dict:
    work = Workload(az, "scaling")
    counter = RequestCounter()
    runtime = ReplicationRuntime(parse_config(config_doc("scaling", "scaling")),
                                 {"AzureWebJobsStorage": az.connection_string("devstoreaccount1"),
                                  "EASTUS_STORAGE": az.connection_string("eastus"),
                                  "WESTEU_STORAGE": az.connection_string("westeu"),
                                  "STORAGE_CLIENT": storage_client()}, counter=counter)
    westeu = BlobServiceClient.from_connection_string(az.connection_string("westeu"))
    for c in ("floor", "rclone", "rewrite"):
        westeu.create_container(c)
    per_commit = []
    peers: dict[int, dict] = {}
    bytes_copied = bytes_added = 0

    def replicate(version: int) -> dict:
        nonlocal bytes_copied, bytes_added
        counter.reset()
        started = time.perf_counter()
        result = handle_storage_event(runtime, work.event(version))
        seconds = time.perf_counter() - started
        assert all(o.error is None for o in result.outcomes), [o.error for o in result.outcomes]
        copied = sum(o.bytes for o in result.outcomes) + len(work.commit_bytes(version))  # data + commit JSON
        added = work.added_bytes(version)
        bytes_copied += copied
        bytes_added += added
        row = {"version": version, "seconds": seconds, "requests": counter.count, "copied": copied, "added": added}
        per_commit.append(row)
        return row

    for size in sizes:
        while work.version + 1 < size:
            replicate(work.commit())
            floor_copy(work, westeu, "floor", work.version)
        rclone(az, "sync", "scaling/t", "rclone/t")  # bring the peers to the same point (untimed)
        cdf = CdfMerge(work, az, f"cdf{size}")
        rows = []
        for _ in range(samples):
            v = work.commit()
            ours = replicate(v)
            rows.append({"project": ours["seconds"], "requests": ours["requests"],
                         "floor": floor_copy(work, westeu, "floor", v),
                         "rclone_sync": rclone(az, "sync", "scaling/t", "rclone/t"),
                         "full_rewrite": full_rewrite(work, az, "rewrite"),
                         "cdf_merge": cdf.apply()})
        peers[size] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        peers[size]["table_versions"] = work.version + 1
        print(f"size {size}: " + ", ".join(f"{k}={v:.3f}" for k, v in peers[size].items()), flush=True)
    runtime.close()
    return {"per_commit": per_commit, "peers": peers, "bytes_copied": bytes_copied, "bytes_added": bytes_added,
            "work": work}


def measure_seeding(az: AzuriteProcess, work: Workload) -> dict:
    runtime = ReplicationRuntime(parse_config(config_doc(work.container, "seed")),
                                 {"AzureWebJobsStorage": az.connection_string("devstoreaccount1"),
                                  "EASTUS_STORAGE": az.connection_string("eastus"),
                                  "WESTEU_STORAGE": az.connection_string("westeu"),
                                  "STORAGE_CLIENT": storage_client()})
    started = time.perf_counter()
    (outcome,) = runtime.replicators["bench"].replicate(None)
    seconds = time.perf_counter() - started
    runtime.close()
    rclone_seconds = rclone(az, "copy", f"{work.container}/t", "rcloneseed/t")
    files = outcome.files
    return {"files": files, "bytes": outcome.bytes, "seconds": seconds, "files_per_s": files / seconds,
            "mb_per_s": outcome.bytes / seconds / 1e6, "rclone_seconds": rclone_seconds,
            "rclone_files_per_s": files / rclone_seconds}


def measure_memory(size_mib: int) -> dict:
    with AzuriteProcess(("eastus",)) as a, AzuriteProcess(("westeu",)) as b:
        src = BlobServiceClient.from_connection_string(a.connection_string("eastus"), max_block_size=8 << 20)
        src.create_container("mem")
        blob = src.get_blob_client("mem", "t/big.bin")
        chunk = os.urandom(8 << 20)

        def chunks():
            for _ in range(size_mib // 8):
                yield chunk

        blob.upload_blob(chunks(), length=size_mib << 20, max_concurrency=4)
        job = {"env": {"SRC": a.connection_string("eastus"), "DST": b.connection_string("westeu")},
               "container": "mem", "path": "big.bin", "size": size_mib << 20}
        out = subprocess.run([sys.executable, "-m", "bench.stream_memory"], input=json.dumps(job), text=True,
                             capture_output=True, cwd=REPO, check=True)
        result = json.loads(out.stdout)
        result["above_baseline_mib"] = result["peak_mib"] - result["baseline_mib"]
        return result


def measure_sustained(seconds: float, rate: float) -> dict:
    with AzuriteProcess(("eastus", "westeu"), with_table=True) as a, AzuriteProcess(("seasia",)) as b:
        work = Workload(a, "sustained")
        doc = config_doc("sustained", "sustained")
        doc["tables"][0]["replicas"].append({"name": "seasia", "connection": "SEASIA_STORAGE",
                                             "container": "sustained", "path": "t"})
        runtime = ReplicationRuntime(parse_config(doc), {"AzureWebJobsStorage": a.connection_string("devstoreaccount1"),
                                                         "EASTUS_STORAGE": a.connection_string("eastus"),
                                                         "WESTEU_STORAGE": a.connection_string("westeu"),
                                                         "SEASIA_STORAGE": b.connection_string("seasia"),
                                                         "STORAGE_CLIENT": storage_client()})
        committed: dict[int, float] = {}
        done: dict[int, float] = {}
        lock = threading.Lock()
        events: queue.Queue = queue.Queue()

        def worker():
            while True:
                item = events.get()
                if item is None:
                    return
                result = handle_storage_event(runtime, work.event(item))
                finished = time.perf_counter()
                reached = min((o.head_after if o.head_after is not None else -1) for o in result.outcomes)
                with lock:
                    for v in range(0, reached + 1):
                        done.setdefault(v, finished)

        workers = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
        for t in workers:
            t.start()
        interval = 1.0 / rate
        start = time.perf_counter()
        next_at = start
        while time.perf_counter() - start < seconds:
            v = work.commit()
            committed[v] = time.perf_counter()
            events.put(v)
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))
        writer_seconds = time.perf_counter() - start
        for _ in workers:
            events.put(None)
        for t in workers:
            t.join()
        runtime.close()
        lags = sorted(done[v] - committed[v] for v in committed if v in done)
        missing = [v for v in committed if v not in done]

        def pct(p):
            return lags[min(len(lags) - 1, int(p * len(lags)))]

        return {"commits": len(committed), "target_rate": rate, "achieved_rate": len(committed) / writer_seconds,
                "seconds": seconds, "p50_lag": pct(0.50), "p99_lag": pct(0.99), "max_lag": lags[-1],
                "not_replicated": len(missing),
                "kept_up": not missing and pct(0.99) < 1.0}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["scaling"]["per_commit"]
    fig, ax = plt.subplots(figsize=(9, 5))
    ax.scatter([r["version"] + 1 for r in rows], [r["seconds"] * 1000 for r in rows], s=6, alpha=0.5,
               label="this project (each commit)")
    sizes = sorted(int(s) for s in results["scaling"]["peers"])
    for key, label in (("project", "this project (median)"), ("floor", "floor: SDK copy, no logic"),
                       ("rclone_sync", "rclone sync"), ("full_rewrite", "full rewrite (deltalake)"),
                       ("cdf_merge", "CDF + MERGE (deltalake)")):
        ax.plot(sizes, [results["scaling"]["peers"][str(s)][key] * 1000 for s in sizes], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("table size (commits)")
    ax.set_ylabel("time to replicate one commit (ms)")
    ax.set_title("Per-commit replication time vs table size (Azurite, one run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_distance(network: dict, path: Path) -> None:
    """Median time from a commit to the replica against the injected round trip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = network["lag"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, label in (("project", "this project"), ("floor", "floor: files then commit, SDK"),
                       ("rclone", "rclone sync")):
        ax.plot([r["rtt_ms"] for r in rows], [r[f"{key}_p50"] * 1000 for r in rows], marker="o", label=f"{label} p50")
        ax.plot([r["rtt_ms"] for r in rows], [r[f"{key}_p99"] * 1000 for r in rows], marker="x", linestyle=":",
                label=f"{label} p99")
    ax.set_xlabel("injected round trip to the replica (ms)")
    ax.set_ylabel("commit-to-replica time (ms)")
    ax.set_title("Lag against distance (replica behind a latency proxy, one run)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    # A SIGTERM unwinds normally, so the Azurite processes this started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="table sizes (commits) to measure at")
    parser.add_argument("--samples", type=int, default=3, help="measured commits per size and method")
    parser.add_argument("--sustained-seconds", type=float, default=60.0, help="sustained-load duration (issue: 300)")
    parser.add_argument("--rate", type=float, default=20.0, help="sustained-load commits per second")
    parser.add_argument("--memory-mib", type=int, default=1024, help="size of the streamed file")
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs (under 5 minutes)")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.samples, args.sustained_seconds, args.memory_mib = "10,100", 2, 10.0, 256
    if shutil.which("rclone") is None:
        print("rclone is missing: apt-get install rclone (bench/run.sh does this)", file=sys.stderr)
        return 2
    OUT.mkdir(exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                                 "cpus": os.cpu_count(),
                                 "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                                 "date": time.strftime("%Y-%m-%d"), "storage_client": storage_client()}}
    with AzuriteProcess(("eastus", "westeu"), with_table=True) as az:
        scaling = measure_scaling(az, sizes, args.samples)
        results["seeding"] = measure_seeding(az, scaling.pop("work"))
    results["scaling"] = {"per_commit": scaling["per_commit"],
                          "peers": {str(k): v for k, v in scaling["peers"].items()},
                          "bytes_copied_over_added": scaling["bytes_copied"] / scaling["bytes_added"]}
    print("seeding:", json.dumps(results["seeding"]), flush=True)
    results["memory"] = measure_memory(args.memory_mib)
    print("memory:", json.dumps(results["memory"]), flush=True)
    results["sustained"] = measure_sustained(args.sustained_seconds, args.rate)
    print("sustained:", json.dumps(results["sustained"]), flush=True)
    peers = results["scaling"]["peers"]
    small, large = str(sizes[0]), str(sizes[-1])
    results["targets"] = {
        "per_commit_large_over_small": peers[large]["project"] / peers[small]["project"],
        "rclone_large_over_small": peers[large]["rclone_sync"] / peers[small]["rclone_sync"],
        "project_over_floor_at_large": peers[large]["project"] / peers[large]["floor"],
        "seeding_over_rclone_speed": results["seeding"]["rclone_seconds"] / results["seeding"]["seconds"],
        "bytes_copied_over_added": results["scaling"]["bytes_copied_over_added"],
        "stream_memory_above_baseline_mib": results["memory"]["above_baseline_mib"],
        "sustained_p99_lag_s": results["sustained"]["p99_lag"],
    }
    from bench import network

    results["network"] = network.run(quick=args.quick)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, OUT / "per_commit.png")
    plot_distance(results["network"], OUT / "lag_vs_distance.png")
    print("\n| size | this project | floor | rclone sync | full rewrite | CDF+MERGE | requests/commit |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        p = peers[str(size)]
        print(f"| {size} | {p['project']*1000:.1f} ms | {p['floor']*1000:.1f} ms | {p['rclone_sync']*1000:.0f} ms | "
              f"{p['full_rewrite']*1000:.0f} ms | {p['cdf_merge']*1000:.0f} ms | {p['requests']:.0f} |")
    print("\ntargets:", json.dumps(results["targets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
