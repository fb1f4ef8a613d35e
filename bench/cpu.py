"""CPU per replicated commit (issue 26), both storage clients side by side, with the profile's top items.

One append-only table (SyntheticTable: one small parquet file and one commit each), its replica in a
second Azurite process (copies stream through this process, as across regions). In each of `--rounds`
rounds, for each client in turn (`STORAGE_CLIENT=sdk`, then `obstore`): a fresh runtime and table, the
replica brought to the head, then `--commits` commits, each written (not measured) and its event handled (`handle_storage_event`, as
the function does): this process's CPU time around each handling, its wall time, its storage
requests, and (last round) a profile of the handlings (yappi, CPU clock, every thread: top functions by
own time). The figure is the median over every commit of every round. Writes bench/out/cpu.json
and bench/cpu_results.md (bench.report includes it in RESULTS.md).

    python -m bench.cpu [--commits 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import yappi

from bench.network import SyntheticTable, _runtime_spec
from devtools.azurite import AzuriteProcess
from devtools.events import blob_created_event
from shared.app.commit_event import handle_storage_event
from shared.config.parse import parse_config
from shared.runtime import ReplicationRuntime
from shared.storage.clients import RequestCounter

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
CLIENTS = ("sdk", "obstore")


def _where(stat) -> str:
    path = stat.module
    return path.split("site-packages/")[-1] if "site-packages/" in path else path.split("/work/")[-1]


def top_items(stats, handled: int, limit: int = 12) -> list[dict]:
    """The functions with the most own CPU (every thread), per handled commit."""
    rows = [{"function": f"{_where(s)}:{s.lineno}({s.name})", "own_ms": s.tsub * 1000 / handled,
             "cumulative_ms": s.ttot * 1000 / handled, "calls": s.ncall / handled} for s in stats]
    return sorted(rows, key=lambda r: -r["own_ms"])[:limit]


PACKAGES = (("azure/storage/blob", "azure-storage-blob"), ("azure/data/tables", "azure-data-tables"),
            ("azure/core", "azure-core"), ("urllib3", "http (urllib3, requests, http.client)"),
            ("requests/", "http (urllib3, requests, http.client)"), ("http/client", "http (urllib3, requests, http.client)"),
            ("obstore", "obstore"), ("opentelemetry", "opentelemetry"), ("logging", "logging"),
            ("/shared/", "this project (shared/)"), ("concurrent/futures", "thread pools"),
            ("threading", "thread pools"), ("json", "json"), ("xml", "xml"), ("email", "http (urllib3, requests, http.client)"))


def by_package(stats, handled: int) -> dict[str, float]:
    """Own CPU per commit grouped by package (every thread)."""
    groups: dict[str, float] = {}
    for s in stats:
        key = next((label for needle, label in PACKAGES if needle in s.module), "other (stdlib, built-ins)")
        groups[key] = groups.get(key, 0.0) + s.tsub * 1000 / handled
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def measure(primary: AzuriteProcess, replica: AzuriteProcess, client: str, commits: int, *, round_: int = 0,
            profile: bool = True) -> dict:
    table = SyntheticTable(primary, f"cpu{client}{round_}")
    doc, environ = _runtime_spec(primary, replica.port, [("bench", table.container)])
    environ["STORAGE_CLIENT"] = client
    counter = RequestCounter()
    runtime = ReplicationRuntime(parse_config(doc), environ, counter=counter)
    runtime.replicators["bench"].replicate(None)  # the replica starts at the head
    for _ in range(5):  # warm: connections, caches
        v = table.commit()
        handle_storage_event(runtime, blob_created_event("eastus", table.container, f"t/_delta_log/{v:020d}.json",
                                                         azurite_port=primary.port))
    cpu, wall, requests = [], [], []
    for _ in range(commits):
        v = table.commit()
        event = blob_created_event("eastus", table.container, f"t/_delta_log/{v:020d}.json", azurite_port=primary.port)
        counter.reset()
        c, t = time.process_time(), time.perf_counter()
        result = handle_storage_event(runtime, event)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - t)
        requests.append(counter.count)
        assert all(o.error is None and o.head_after == v for o in result.outcomes), result.outcomes
    row = {"client": client, "commits": commits, "cpu_ms": [c * 1000 for c in cpu],
           "cpu_ms_median": statistics.median(cpu) * 1000, "cpu_ms_mean": statistics.mean(cpu) * 1000,
           "wall_ms_median": statistics.median(wall) * 1000, "requests_per_commit": statistics.median(requests),
           "last_commit_requests": dict(counter.by_method)}
    if not profile:
        runtime.close()
        return row
    # The profile on a second pass (profiling inflates the CPU it measures): CPU clock, every thread.
    handled = min(commits, 100)
    yappi.set_clock_type("cpu")
    yappi.clear_stats()
    window = 0.0
    for _ in range(handled):
        v = table.commit()
        event = blob_created_event("eastus", table.container, f"t/_delta_log/{v:020d}.json", azurite_port=primary.port)
        c = time.process_time()
        yappi.start(profile_threads=True)
        handle_storage_event(runtime, event)
        yappi.stop()
        window += time.process_time() - c
    # An entry with more own time than the whole window's CPU (three times over, for yappi's own cost)
    # is a yappi error, not a cost: it once reported 169 ms per commit for a typing check never called
    # in the window ("[yappi-err] Internal Error. [15]").
    stats = [s for s in yappi.get_func_stats() if s.ncall > 0 and s.tsub <= 3 * window]
    runtime.close()
    return {**row, "profile_top": top_items(stats, handled), "profile_by_package": by_package(stats, handled)}


def rounds(primary: AzuriteProcess, replica: AzuriteProcess, clients: list[str], commits: int, count: int) -> list[dict]:
    """`count` rounds, the clients taking turns in each (fresh runtime and table every time), so that
    what this shared machine does meanwhile falls on both alike; one row per client: the median over
    every commit of every round, each round's median, and the profile of the last round."""
    runs: dict[str, list[dict]] = {c: [] for c in clients}
    for r in range(count):
        for client in clients:
            run = measure(primary, replica, client, commits, round_=r, profile=r == count - 1)
            print(json.dumps({"round": r, **{k: v for k, v in run.items() if k not in ("cpu_ms", "profile_top")}}),
                  flush=True)
            runs[client].append(run)
    rows = []
    for client, done in runs.items():
        every = [c for run in done for c in run["cpu_ms"]]
        last = done[-1]
        rows.append({**{k: v for k, v in last.items() if k != "cpu_ms"}, "commits": commits * count,
                     "rounds": count, "cpu_ms_median": statistics.median(every), "cpu_ms_mean": statistics.mean(every),
                     "round_medians": [run["cpu_ms_median"] for run in done],
                     "wall_ms_median": statistics.median(run["wall_ms_median"] for run in done)})
    return rows


def report(results: dict) -> str:
    m = results["machine"]
    lines = ["## CPU per replicated commit (issue 26)", "",
             f"`python -m bench.cpu`: one append-only table, its replica in a second Azurite process (copies stream "
             f"through the process), {results['commits']} commits per client ({results.get('rounds', 1)} rounds, the "
             "clients taking turns, each round on a fresh runtime and table: this machine's speed drifts by 10-15% "
             "over minutes), each event handled as the function does; CPU is this process's "
             f"({m['platform']}, {m['cpus']} CPUs; run on {m['date']}"
             + (f" at {m['commit']}" if m.get("commit") else "") + ").", "",
             "| storage client | CPU per commit (median) | mean | each round's median | wall per commit (median of the rounds') "
             "| requests / commit |",
             "|---|---:|---:|---|---:|---:|"]
    for row in results["clients"]:
        each = " / ".join(f"{v:.2f}" for v in row.get("round_medians", [row["cpu_ms_median"]]))
        lines.append(f"| {row['client']} | {row['cpu_ms_median']:.2f} ms | {row['cpu_ms_mean']:.2f} ms | {each} ms | "
                     f"{row['wall_ms_median']:.2f} ms | {row['requests_per_commit']:.0f} |")
    for row in results["clients"]:
        lines += ["", f"Profile, `{row['client']}` (own CPU per commit, every thread, under yappi, which inflates it): by package "
                  + ", ".join(f"{k} {v:.2f} ms" for k, v in row["profile_by_package"].items()) + ".", "",
                  "| function | own ms / commit | cumulative ms / commit | calls / commit |", "|---|---:|---:|---:|"]
        lines += [f"| `{r['function']}` | {r['own_ms']:.3f} | {r['cumulative_ms']:.3f} | {r['calls']:.1f} |"
                  for r in row["profile_top"][:8]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=200, help="commits per client and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the clients taking turns in each")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                 "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
                                 "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                          text=True, cwd=HERE).stdout.strip()},
                     "commits": args.commits * args.rounds, "rounds": args.rounds, "clients": []}
    with AzuriteProcess(("eastus",), with_table=True) as primary, AzuriteProcess(("westeu",)) as replica:
        results["clients"] = rounds(primary, replica, args.clients.split(","), args.commits, args.rounds)
    (OUT / "cpu.json").write_text(json.dumps(results, indent=1))
    (HERE / "cpu_results.md").write_text(report(results))
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
