"""Replication at a distance: the replica's Azurite behind bench.latency_proxy, the primary local.

- lag: p50/p99 commit-to-replica time at each injected round trip for this project, the floor
  (copy the commit's files, then the commit, with direct SDK calls) and rclone sync, same commits;
- readable: time until a new replica of a table with a checkpoint is readable at the head, the
  backfill of its history after that, and rclone copy of the same table at the same distance;
  for two shapes of a 1,000-commit table: appends with an OPTIMIZE every 50 commits (a
  streaming table's usual shape, history >> live data) and appends only (live = everything);
- throughput: synthetic writers (a process of their own) on several tables, one host worker
  process (its own process, as in the Functions host) at rising rates: the commits/s it keeps
  up with at p99 lag <= 1 s, and its CPU milliseconds per replicated commit.

The replica lives in a second Azurite process, so copies stream through this process (Copy Blob
between accounts of one Azurite would run inside Azurite and bypass the proxy). The latency
proxy runs in a process of its own: the network's work is not the measured process's.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import statistics
import subprocess
import threading
import time
import types
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

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
from shared.app.commit_event import handle_storage_event
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


def _runtime_spec(primary: AzuriteProcess, replica_port: int, tables: list[tuple]) -> tuple[dict, dict]:
    """The configuration document and settings; tables: (name, primary container[, replica container])."""
    doc = {"tables": [{"name": t[0], "source": {"connection": "EASTUS_STORAGE", "container": t[1], "path": "t"},
                       "replicas": [{"name": "westeu", "connection": "WESTEU_STORAGE", "container": t[-1],
                                     "path": "t"}]} for t in tables]}
    return doc, {"AzureWebJobsStorage": primary.connection_string("devstoreaccount1"),
                 "EASTUS_STORAGE": primary.connection_string("eastus"),
                 "WESTEU_STORAGE": remote_connection(replica_port, "westeu"),
                 "STORAGE_CLIENT": storage_client()}


def storage_client() -> str:
    """The storage client the benchmarks run with: STORAGE_CLIENT of the benchmark's own environment
    (`STORAGE_CLIENT=sdk bash bench/run.sh` measures the SDK fallback), default obstore."""
    return os.environ.get("STORAGE_CLIENT", "obstore")


def _runtime(primary: AzuriteProcess, replica_port: int, tables: list[tuple], counter=None):
    doc, environ = _runtime_spec(primary, replica_port, tables)
    return ReplicationRuntime(parse_config(doc), environ, counter=counter)


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
    """A new replica of `table` (with a checkpoint at its head): readable, then backfilled.

    `replica` may be the primary's own Azurite process (account westeu, no proxy): bulk copies
    are then server-side Copy Blob, as between two Azure accounts; rclone between two remotes
    streams through itself either way."""
    tag = f"r{int(rtt_ms)}x{uuid.uuid4().hex[:6]}"
    same = replica is primary
    direct = contextlib.nullcontext(types.SimpleNamespace(port=primary.port))  # no proxy: the port itself
    with (direct if same else ProxyProcess(replica.port, rtt_ms)) as proxy:
        remote = BlobServiceClient.from_connection_string(remote_connection(proxy.port, "westeu"))
        remote.create_container(tag)
        remote.create_container(tag + "rc")
        runtime = _runtime(primary, proxy.port, [("bench", table.container, tag)])
        replicator = runtime.replicators["bench"]
        started, cpu_started = time.perf_counter(), time.process_time()
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
        cpu = time.process_time() - cpu_started
        runtime.close()
        copy = rclone("copy", primary, table.container, proxy.port, tag + "rc")
    return {"rtt_ms": rtt_ms, "shape": shape, "versions": table.version + 1, "readable_s": readable,
            "seeded_at": first.seeded,
            "backfill_s": backfill, "backfill_steps": steps, "backfill_versions_per_s": (first.seeded or 0) / backfill,
            "rclone_copy_s": copy, "rclone_versions_per_s": (table.version + 1) / copy,
            "readable_vs_rclone": readable / copy, "cpu_s": cpu,
            "copies": "server-side (one Azurite)" if same else "streamed (two Azurite processes)"}


def _write_commits(spec: dict, out, seconds: float, rate: float, tables: int) -> None:
    """The writers, in a process of their own (writers are other machines): one thread per table
    at rate/tables commits/s, each commit's time (time.monotonic, system-wide) sent to `out`."""
    # obstore, not the SDK: at 200 commits/s the SDK's CPU per request would make the load generator,
    # not the host, the 2-core machine's bottleneck.
    import obstore
    from obstore.store import AzureStore

    def writer(i: int) -> None:
        store = AzureStore(spec["containers"][i], account_name="eastus", account_key=account_key("eastus"),
                           endpoint=spec["endpoint"], client_options={"allow_http": True})
        version = spec["versions"][i]
        interval = tables / rate
        next_at = time.monotonic()
        end = next_at + seconds
        while time.monotonic() < end:
            name = f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"
            obstore.put(store, f"t/{name}", spec["parquet"], mode="create")
            version += 1
            obstore.put(store, f"t/_delta_log/{version:020d}.json",
                        spec["template"].replace(spec["old_path"], name).encode(), mode="create")
            out.put((i, version, time.monotonic()))
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(tables)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(("cpu", time.process_time()))
    out.put(None)


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _emulators_cpu(*processes: AzuriteProcess) -> float:
    return sum(_process_cpu(p.pid) for a in processes for p in (a.process, a.table_process) if p is not None)


def _host_process(doc: dict, environ: dict, events, done, threads: int) -> None:
    """One Python worker process of the Functions host: its own runtime, `threads` invocations
    at a time (the worker's thread pool), events from `events`, (key, time done) to `done`."""
    runtime = ReplicationRuntime(parse_config(doc), environ)
    work: queue.Queue = queue.Queue()

    def invoke() -> None:
        while (item := work.get()) is not None:
            key, envelope = item
            handle_storage_event(runtime, envelope)
            done.put((key, time.monotonic()))

    pool = [threading.Thread(target=invoke, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    cpu = time.process_time()
    while (item := events.get()) is not None:
        work.put(item)
    for _ in pool:
        work.put(None)
    for t in pool:
        t.join()
    runtime.close()
    done.put(("cpu", time.process_time() - cpu))


def measure_throughput(primary: AzuriteProcess, replica: AzuriteProcess, rates: list[float], seconds: float,
                       tables: int | None = None, processes: int = 1, threads: int = 6) -> list[dict]:
    """Synthetic writers (another process) on `tables` tables at each total rate (default: one table per
    12.5 commits/s, at least 4: a writer thread per table sends its two PUTs in turn, and four of them
    could not send more than about 55 commits/s through a busy emulator). The host has
    `processes` Python worker processes (FUNCTIONS_WORKER_PROCESS_COUNT, default 1), each
    running `threads` invocations at once (the Python worker's default pool on 2 cores:
    min(32, cores + 4) = 6); each event goes to the next worker in turn, as the host
    dispatches, whatever its table. The replica is direct on loopback.

    Two worker processes on this 2-core machine did worse (measured: 75 commits/s, p99 15.7 s
    against 7.6 s with one): a table's concurrent events then meet in different processes,
    where the in-process ordering cannot help, and take the leased catch-up path."""
    import itertools
    import multiprocessing

    results = []
    context = multiprocessing.get_context("spawn")
    for rate in rates:
        tables_now = tables or max(4, int(rate // 12.5))
        tag = f"tp{int(rate)}"
        synth = [SyntheticTable(primary, f"{tag}t{i}") for i in range(tables_now)]
        names = [(f"t{i}", s.container) for i, s in enumerate(synth)]
        runtime = _runtime(primary, replica.port, names)
        for name, _ in names:
            runtime.replicators[name].replicate(None)  # the replicas start at the primary's head
        runtime.close()
        doc, environ = _runtime_spec(primary, replica.port, names)
        done = context.Queue()
        inboxes = [context.Queue() for _ in range(processes)]
        hosts = [context.Process(target=_host_process, args=(doc, environ, inbox, done, threads))
                 for inbox in inboxes]
        for host in hosts:
            host.start()
        spec = {"endpoint": primary.endpoint("eastus"), "containers": [s.container for s in synth],
                "versions": [s.version for s in synth], "template": synth[0].template, "old_path": synth[0].old_path,
                "parquet": synth[0].parquet}
        out = context.Queue()
        emulators_before = _emulators_cpu(primary, replica)
        writers = context.Process(target=_write_commits, args=(spec, out, seconds, rate, tables_now))
        writers.start()
        committed: dict = {}
        started = None
        writers_cpu = 0.0
        turns = itertools.cycle(inboxes)
        while (item := out.get()) is not None:
            if item[0] == "cpu":
                writers_cpu = item[1]
                continue
            i, v, at = item
            started = started or at
            committed[(i, v)] = at
            envelope = blob_created_event("eastus", synth[i].container, f"t/_delta_log/{v:020d}.json",
                                          azurite_port=primary.port)
            next(turns).put(((i, v), envelope))
        written = time.monotonic() - started
        writers.join()
        for inbox in inboxes:
            inbox.put(None)
        done_at: dict = {}
        cpu = 0.0
        finished = 0
        while finished < processes:
            key, value = done.get()
            if key == "cpu":
                cpu += value
                finished += 1
            else:
                done_at[key] = value
        for host in hosts:
            host.join()
        emulators_cpu = _emulators_cpu(primary, replica) - emulators_before
        lags = [done_at[k] - committed[k] for k in committed if k in done_at]
        missed = [k for k in committed if k not in done_at]
        row = {"target_rate": rate, "achieved_rate": len(committed) / written, "commits": len(committed),
               "tables": tables_now, "processes": processes, "p50_lag": pct(lags, 0.5), "p99_lag": pct(lags, 0.99),
               "max_lag": max(lags), "missed": len(missed), "cpu_ms_per_commit": cpu * 1000 / len(committed),
               "emulators_cpu_ms_per_commit": emulators_cpu * 1000 / len(committed),
               "writers_cpu_ms_per_commit": writers_cpu * 1000 / len(committed),
               "storage_client": storage_client()}
        row["kept_up"] = not missed and row["p99_lag"] <= 1.0 and row["achieved_rate"] >= 0.9 * rate
        print("throughput:", json.dumps(row), flush=True)
        results.append(row)
    return results


def run(*, quick: bool, phases: set[str] = frozenset({"lag", "readable", "throughput"})) -> dict:
    out: dict = {"lag": [], "readable": [], "throughput": []}
    with contextlib.ExitStack() as stack:
        if "lag" in phases:
            primary = stack.enter_context(AzuriteProcess(("eastus",), with_table=True))
            replica = stack.enter_context(AzuriteProcess(("westeu",)))
        for rtt in (0, 30, 100) if "lag" in phases else ():
            row = measure_lag(primary, replica, rtt, 8 if quick else 30)
            print("lag:", json.dumps(row), flush=True)
            out["lag"].append(row)
    # Fresh emulators for each phase: Azurite slows as it accumulates blobs, which is not what
    # these phases measure.
    for shape, compact_every in (("compacted", 50), ("append-only", None)) if "readable" in phases else ():
        with AzuriteProcess(("eastus", "westeu"), with_table=True) as primary, \
                AzuriteProcess(("westeu",)) as replica:
            table = build_table(primary, f"ready{shape[0]}", 300 if quick else 1000, compact_every)
            for rtt, where in ((0, primary), (0, replica), (30, replica)):
                row = measure_readable(primary, where, rtt, table, shape)
                print("readable:", json.dumps(row), flush=True)
                out["readable"].append(row)
    for rate in ([50, 100] if quick else [50, 100, 150, 200, 250]) if "throughput" in phases else ():
        with AzuriteProcess(("eastus",), with_table=True) as primary, AzuriteProcess(("westeu",)) as replica:
            out["throughput"] += measure_throughput(primary, replica, [rate], 8 if quick else 30)
    return out


def main() -> int:
    """`python -m bench.network --phases throughput,readable`: measure those phases again into
    bench/out/results.json (the other figures stay from the last full run); the report names the
    phases re-measured, with the commit and date, under the run's line."""
    import argparse
    import platform
    import sys

    parser = argparse.ArgumentParser(prog="python -m bench.network", description=main.__doc__.splitlines()[0])
    parser.add_argument("--phases", default="throughput", help="comma-separated: lag, readable, throughput")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(phases) - {"lag", "readable", "throughput"})
    if unknown:
        print(f"unknown phase(s) {', '.join(unknown)}: choose from lag, readable, throughput", file=sys.stderr)
        return 2
    path = Path(__file__).resolve().parent / "out" / "results.json"
    if not path.exists():
        print(f"{path} is missing: run `bash bench/run.sh` once first", file=sys.stderr)
        return 2
    results = json.loads(path.read_text())
    measured = run(quick=args.quick, phases=set(phases))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=path.parent).stdout.strip()
    for phase in phases:
        results["network"][phase] = measured[phase]
    results.setdefault("remeasured", []).append({
        "phases": phases, "commit": commit, "date": time.strftime("%Y-%m-%d"), "storage_client": storage_client(),
        "platform": platform.platform(), "cpus": os.cpu_count()})
    path.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
