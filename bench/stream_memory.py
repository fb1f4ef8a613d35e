"""Peak memory of streaming one large file between two Azurite processes (run as a subprocess).

Prints JSON: baseline and peak RSS in MiB, file size, seconds.
"""

import json
import sys
import time


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_mib() -> float:
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak across exec.
    return _status_mib("VmHWM")


def main() -> int:
    job = json.loads(sys.stdin.read())
    import os
    from types import SimpleNamespace

    from shared.config.settings import resolve_connection
    from shared.storage.clients import build_blob_service_client
    from shared.storage.factory import Stores
    from shared.storage.object_client import ObjectClients

    settings = {name: resolve_connection(name, job["env"]) for name in ("SRC", "DST")}
    objects = ObjectClients(settings) if os.environ.get("STORAGE_CLIENT", "obstore") == "obstore" else None
    stores = Stores({name: build_blob_service_client(s) for name, s in settings.items()}, objects)
    source = stores.table(SimpleNamespace(name="source", connection="SRC", container=job["container"], path="t"))
    replica = stores.table(SimpleNamespace(name="replica", connection="DST", container=job["container"], path="t"))
    baseline = rss_mib()
    started = time.monotonic()
    copied = replica.copy_file_from(source, job["path"], expected_size=job["size"])
    seconds = time.monotonic() - started
    peak = peak_rss_mib()
    print(json.dumps({"baseline_mib": baseline, "peak_mib": peak, "bytes": copied, "seconds": seconds,
                      "streamed": replica.streams_from(source)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
