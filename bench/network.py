"""Replication at a distance: the replica's Azurite behind bench.latency_proxy, the primary local.

- lag: p50/p99 commit-to-replica time at each injected round trip for this project, the floor
  (copy the commit's files, then the commit, with direct SDK calls) and rclone sync, same commits;
- readable: time until a new replica of a table with a checkpoint is readable at the head, the
  backfill of its history after that, and rclone copy of the same table at the same distance;
- throughput: synthetic writers on several tables, the commits/s one process keeps up with at
  p99 lag <= 1 s, and CPU milliseconds per replicated commit.

The replica lives in a second Azurite process, so copies stream through this process (Copy Blob
between accounts of one Azurite would run inside Azurite and bypass the proxy).
"""

from __future__ import annotations

import json
import os
import queue
import resource
import statistics
import subprocess
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

from azure.storage.blob import (
    BlobServiceClient,
    ContainerSasPermissions,
    generate_container_sas,
)
from deltalake import DeltaTable

from bench.latency_proxy import ProxyProcess
from devtools.azurite import AzuriteProcess, account_key
from devtools.events import blob_created_event
from shared.config.parse import parse_config
from shared.replication.commit_events import handle_storage_event
from shared.runtime import ReplicationRuntime


def remote_connection(port: int, account: str) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={account_key(account)};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{account};")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


class SyntheticTable:
    """A valid Delta table grown by copies of one append commit with new file names (tiny parquet
    files uploaded directly), much faster than a deltalake writer."""

    def __init__(self, primary: AzuriteProcess, container: str, path: str = "t") -> None:
        from deltalake import write_deltalake

        from bench.__main__ import batch

        self.container, self.path = container, path
        self.client = BlobServiceClient.from_connection_string(primary.connection_string("eastus"))
        self.client.create_container(container)
        self.cc = self.client.get_container_client(container)
        uri, options = f"az://{container}/{path}", primary.storage_options("eastus")
        write_deltalake(uri, batch(0), storage_options=options, configuration={"delta.checkpointInterval": "100"})
        write_deltalake(uri, batch(20), mode="append", storage_options=options)
        self.uri, self.options = uri, options
        template = self.cc.download_blob(f"{path}/_delta_log/{1:020d}.json").readall().decode()
        add = next(json.loads(line)["add"] for line in template.splitlines() if '"add"' in line)
        self.template, self.old_path = template, add["path"]
        self.parquet = self.cc.download_blob(f"{path}/{add['path']}").readall()
        self.version = 1
        self.lock = threading.Lock()

    def commit(self) -> int:
        """One append commit: upload a parquet file, then create the next commit (conditional)."""
        name = f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"
        self.cc.upload_blob(f"{self.path}/{name}", self.parquet, overwrite=False)
        data = self.template.replace(self.old_path, name).encode()
        with self.lock:
            self.version += 1
            self.cc.upload_blob(f"{self.path}/_delta_log/{self.version:020d}.json", data, overwrite=False)
            return self.version

    def compact(self) -> None:
        """OPTIMIZE (deltalake): the live files become one; the old ones stay as history."""
        with self.lock:
            table = DeltaTable(self.uri, storage_options=self.options)
            table.optimize.compact()
            table.update_incremental()
            self.version = table.version()

    def checkpoint(self) -> None:
        DeltaTable(self.uri, storage_options=self.options).create_checkpoint()


def build_table(primary: AzuriteProcess, container: str, versions: int, compact_every: int | None) -> SyntheticTable:
    """A `versions`-commit table with a checkpoint at its head: appends, and an OPTIMIZE every
    `compact_every` commits when given (a streaming table's usual shape: history >> live data)."""
    table = SyntheticTable(primary, container)
    while table.version + 1 < versions:
        if compact_every and (table.version + 1) % compact_every == 0:
            table.compact()
        else:
            table.commit()
    table.checkpoint()
    return table


def _rclone_remote_env(env: dict, name: str, endpoint: str, account: str, container: str) -> None:
    sas = generate_container_sas(account, container, account_key=account_key(account),
                                 permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True,
                                                                    add=True, create=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=2))
    env[f"RCLONE_CONFIG_{name}_TYPE"] = "azureblob"
    env[f"RCLONE_CONFIG_{name}_SAS_URL"] = f"{endpoint}/{container}?{sas}"


def rclone(verb: str, primary: AzuriteProcess, src_container: str, proxy_port: int, dst_container: str,
           path: str = "t") -> float:
    env = dict(os.environ)
    _rclone_remote_env(env, "SRC", primary.endpoint("eastus"), "eastus", src_container)
    _rclone_remote_env(env, "DST", f"http://127.0.0.1:{proxy_port}/westeu", "westeu", dst_container)
    started = time.perf_counter()
    subprocess.run(["rclone", verb, f"SRC:{src_container}/{path}", f"DST:{dst_container}/{path}",
                    "--transfers", "16", "--checkers", "16"], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def _runtime(primary: AzuriteProcess, replica_port: int, tables: list[tuple], counter=None):
    """tables: (name, primary container[, replica container])."""
    doc = {"tables": [{"name": t[0], "source": {"connection": "EASTUS_STORAGE", "container": t[1], "path": "t"},
                       "replicas": [{"name": "westeu", "connection": "WESTEU_STORAGE", "container": t[-1],
                                     "path": "t"}]} for t in tables]}
    return ReplicationRuntime(parse_config(doc), {"AzureWebJobsStorage": primary.connection_string("devstoreaccount1"),
                                                 "EASTUS_STORAGE": primary.connection_string("eastus"),
                                                 "WESTEU_STORAGE": remote_connection(replica_port, "westeu")},
                              counter=counter)


def measure_lag(primary: AzuriteProcess, replica: AzuriteProcess, rtt_ms: float, commits: int) -> dict:
    """Per-commit time for this project, the floor and rclone sync, on the same commits."""
    from bench.__main__ import Workload, floor_copy

    tag = f"lag{int(rtt_ms)}"
    with ProxyProcess(replica.port, rtt_ms) as proxy:
        remote = BlobServiceClient.from_connection_string(remote_connection(proxy.port, "westeu"))
        for c in (tag, f"{tag}floor", f"{tag}rclone"):
            remote.create_container(c)
        work = Workload(primary, tag)
        runtime = _runtime(primary, proxy.port, [("bench", tag)])
        ours, floor, sync = [], [], []
        for i in range(commits + 3):
            v = work.commit()
            started = time.perf_counter()
            result = handle_storage_event(runtime, blob_created_event("eastus", tag, f"t/_delta_log/{v:020d}.json",
                                                                      azurite_port=primary.port))
            seconds = time.perf_counter() - started
            assert all(o.error is None for o in result.outcomes), [o.error for o in result.outcomes]
            f = floor_copy(work, remote, f"{tag}floor", v)
            r = rclone("sync", primary, tag, proxy.port, f"{tag}rclone")
            if i >= 3:  # the first commits warm connections and seed the peers
                ours.append(seconds)
                floor.append(f)
                sync.append(r)
        runtime.close()
    return {"rtt_ms": rtt_ms, "commits": commits,
            "project_p50": statistics.median(ours), "project_p99": pct(ours, 0.99),
            "floor_p50": statistics.median(floor), "floor_p99": pct(floor, 0.99),
            "rclone_p50": statistics.median(sync), "rclone_p99": pct(sync, 0.99)}


def measure_readable(primary: AzuriteProcess, replica: AzuriteProcess, rtt_ms: float,
                     table: SyntheticTable, shape: str) -> dict:
    """A new replica of `table` (with a checkpoint at its head): readable, then backfilled."""
    tag = f"r{int(rtt_ms)}x{uuid.uuid4().hex[:6]}"
    with ProxyProcess(replica.port, rtt_ms) as proxy:
        remote = BlobServiceClient.from_connection_string(remote_connection(proxy.port, "westeu"))
        remote.create_container(tag)
        remote.create_container(tag + "rc")
        runtime = _runtime(primary, proxy.port, [("bench", table.container, tag)])
        replicator = runtime.replicators["bench"]
        started = time.perf_counter()
        (first,) = replicator.replicate(None)  # readable at the head, then a first backfill step
        readable = first.readable_seconds
        assert first.error is None and first.head_after == table.version, first.error
        steps = 1
        while first.history is not None:
            (step,) = replicator.replicate(None)
            steps += 1
            assert step.error is None, step.error
            if step.history is None:
                break
        backfill = time.perf_counter() - started - readable
        runtime.close()
        copy = rclone("copy", primary, table.container, proxy.port, tag + "rc")
    return {"rtt_ms": rtt_ms, "shape": shape, "versions": table.version + 1, "readable_s": readable,
            "seeded_at": first.seeded,
            "backfill_s": backfill, "backfill_steps": steps, "backfill_versions_per_s": (first.seeded or 0) / backfill,
            "rclone_copy_s": copy, "rclone_versions_per_s": (table.version + 1) / copy,
            "readable_vs_rclone": readable / copy}


def _write_commits(spec: dict, out, seconds: float, rate: float, tables: int) -> None:
    """The writers, in a process of their own (writers are other machines): one thread per table
    at rate/tables commits/s, each commit's time (time.monotonic, system-wide) sent to `out`."""
    client = BlobServiceClient.from_connection_string(spec["connection"])

    def writer(i: int) -> None:
        cc = client.get_container_client(spec["containers"][i])
        version = spec["versions"][i]
        interval = tables / rate
        next_at = time.monotonic()
        end = next_at + seconds
        while time.monotonic() < end:
            name = f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"
            cc.upload_blob(f"t/{name}", spec["parquet"], overwrite=False)
            version += 1
            cc.upload_blob(f"t/_delta_log/{version:020d}.json", spec["template"].replace(spec["old_path"], name).encode(),
                           overwrite=False)
            out.put((i, version, time.monotonic()))
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(tables)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(None)


def measure_throughput(primary: AzuriteProcess, replica: AzuriteProcess, rates: list[float], seconds: float,
                       tables: int = 4, workers: int = 8) -> list[dict]:
    """Synthetic writers (another process) on `tables` tables at each total rate; each event
    delivered as it happens by `workers` threads of this process, the replica direct on loopback."""
    import multiprocessing

    results = []
    context = multiprocessing.get_context("spawn")
    for rate in rates:
        tag = f"tp{int(rate)}"
        synth = [SyntheticTable(primary, f"{tag}t{i}") for i in range(tables)]
        names = [(f"t{i}", s.container) for i, s in enumerate(synth)]
        runtime = _runtime(primary, replica.port, names)
        for name, _ in names:
            runtime.replicators[name].replicate(None)  # the replicas start at the primary's head
        events: queue.Queue = queue.Queue()
        committed: dict = {}
        done: dict = {}
        lock = threading.Lock()

        def worker() -> None:
            while (item := events.get()) is not None:
                key, container, v = item
                handle_storage_event(runtime, blob_created_event("eastus", container, f"t/_delta_log/{v:020d}.json",
                                                                 azurite_port=primary.port))
                with lock:
                    done[key] = time.monotonic()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
        for t in threads:
            t.start()
        spec = {"connection": primary.connection_string("eastus"), "containers": [s.container for s in synth],
                "versions": [s.version for s in synth], "template": synth[0].template, "old_path": synth[0].old_path,
                "parquet": synth[0].parquet}
        out = context.Queue()
        writers = context.Process(target=_write_commits, args=(spec, out, seconds, rate, tables))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_before = usage.ru_utime + usage.ru_stime
        writers.start()
        started = None
        while (item := out.get()) is not None:
            i, v, at = item
            started = started or at
            committed[(i, v)] = at
            events.put(((i, v), synth[i].container, v))
        written = time.monotonic() - started
        writers.join()
        for _ in threads:
            events.put(None)
        for t in threads:
            t.join()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime - cpu_before
        runtime.close()
        lags = [done[k] - committed[k] for k in committed if k in done]
        missed = [k for k in committed if k not in done]
        row = {"target_rate": rate, "achieved_rate": len(committed) / written, "commits": len(committed),
               "tables": tables, "p50_lag": pct(lags, 0.5), "p99_lag": pct(lags, 0.99), "max_lag": max(lags),
               "missed": len(missed), "cpu_ms_per_commit": cpu * 1000 / len(committed)}
        row["kept_up"] = not missed and row["p99_lag"] <= 1.0 and row["achieved_rate"] >= 0.9 * rate
        print("throughput:", json.dumps(row), flush=True)
        results.append(row)
    return results


def run(*, quick: bool) -> dict:
    out: dict = {"lag": [], "readable": [], "throughput": []}
    with AzuriteProcess(("eastus",), with_table=True) as primary, AzuriteProcess(("westeu",)) as replica:
        for rtt in (0, 30, 100):
            row = measure_lag(primary, replica, rtt, 8 if quick else 30)
            print("lag:", json.dumps(row), flush=True)
            out["lag"].append(row)
        for shape, compact_every in (("compacted", 50), ("append-only", None)):
            table = build_table(primary, f"ready{shape[0]}", 1000, compact_every)
            for rtt in (0, 30):
                row = measure_readable(primary, replica, rtt, table, shape)
                print("readable:", json.dumps(row), flush=True)
                out["readable"].append(row)
        out["throughput"] = measure_throughput(primary, replica, [25, 50] if quick else [25, 50, 75, 100],
                                               8 if quick else 30)
    return out
