"""Catch-up memory (issues 15 and 26: "catch-up memory bounded"): the host process's peak RSS above its
baseline while one replica catches up a lag of N versions of about 1 MiB commits each, for two lags,
each catch-up in a fresh process (its own VmHWM), with the default storage client.

The table: deltalake writes version 0 and a 1 MiB append (its commitInfo padded); versions 2..N are
copies of that commit (the same data file again), as `tests/test_hardening.py` builds them. What
bounds the memory: catch-up batches (two of at most 8 MiB of commits in flight) and the commit cache
(16 MiB), not the lag. Writes bench/out/catchup_memory.json (bench.report renders it).

    python -m bench.catchup_memory [--lags 100,500]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
MiB = 1024 * 1024


def _build(primary, container: str, versions: int) -> int:
    """The table at `container`/t with versions 0..versions-1; returns the commit size in bytes."""
    import pyarrow as pa
    from azure.storage.blob import BlobServiceClient
    from deltalake import CommitProperties, write_deltalake

    client = BlobServiceClient.from_connection_string(primary.connection_string("eastus"))
    client.create_container(container)
    uri, options = f"az://{container}/t", primary.storage_options("eastus")
    data = pa.table({"id": pa.array([1], pa.int64())})
    write_deltalake(uri, data, mode="overwrite", storage_options=options)
    write_deltalake(uri, data, mode="append", storage_options=options,
                    commit_properties=CommitProperties(custom_metadata={"pad": "x" * MiB}))
    cc = client.get_container_client(container)
    template = cc.download_blob(f"t/_delta_log/{1:020d}.json").readall()
    for v in range(2, versions):
        cc.upload_blob(f"t/_delta_log/{v:020d}.json", template)
    return len(template)


def _child() -> int:
    """In a fresh process: build the runtime, catch the replica up, print baseline and peak RSS."""
    from bench.stream_memory import peak_rss_mib, rss_mib
    from shared.config.parse import parse_config
    from shared.runtime import ReplicationRuntime

    job = json.loads(sys.stdin.read())
    runtime = ReplicationRuntime(parse_config(job["doc"]), job["env"])
    replicator = runtime.replicators["bench"]
    baseline = rss_mib()
    started = time.monotonic()
    (outcome,) = replicator.replicate(None)
    seconds = time.monotonic() - started
    peak = peak_rss_mib()
    runtime.close()
    print(json.dumps({"baseline_mib": baseline, "peak_mib": peak, "seconds": seconds,
                      "head_after": outcome.head_after, "error": None if outcome.error is None else str(outcome.error)}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lags", default="100,500", help="versions behind, comma-separated")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child()
    from bench.network import _runtime_spec, storage_client
    from devtools.azurite import AzuriteProcess

    rows = []
    with AzuriteProcess(("eastus",), with_table=True) as primary, AzuriteProcess(("westeu",)) as replica:
        for lag in (int(x) for x in args.lags.split(",")):
            container = f"catchup{lag}"
            size = _build(primary, container, lag)
            doc, env = _runtime_spec(primary, replica.port, [("bench", container)])
            done = subprocess.run([sys.executable, "-m", "bench.catchup_memory", "--child"], cwd=HERE.parent,
                                  input=json.dumps({"doc": doc, "env": env}), capture_output=True, text=True,
                                  check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            if row["error"] is not None or row["head_after"] != lag - 1:
                raise SystemExit(f"catch-up of {lag} versions did not finish: {row}")
            row.update(lag=lag, commit_mib=size / MiB, storage_client=storage_client())
            print(json.dumps(row), flush=True)
            rows.append(row)
    OUT.mkdir(exist_ok=True)
    (OUT / "catchup_memory.json").write_text(json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
