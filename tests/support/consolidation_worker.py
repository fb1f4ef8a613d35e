"""A consolidation run that kills itself (SIGKILL) at an armed failpoint.

Reads one JSON document on stdin: config, environ, status_table, failpoint, after.
The failpoint `consolidation.merge` kills the process once the merge has written a data
file to the target and before it commits (or at the commit, if the merge was quicker than
the watcher). Exit status -9 means the process was killed; 0 means it ran to the end.
"""

import json
import os
import signal
import sys
import threading
import time

from azure.data.tables import TableServiceClient

from shared import failpoints
from shared.config.parse import parse_config
from shared.consolidation.run import run_consolidation
from shared.consolidation.state import ConsolidationStatusStore
from shared.runtime import ReplicationRuntime


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    job = json.load(sys.stdin)
    runtime = ReplicationRuntime(parse_config(job["config"]), job["environ"])
    consolidation = runtime.config.consolidations[0]
    status = ConsolidationStatusStore(TableServiceClient.from_connection_string(job["environ"]["AzureWebJobsStorage"]),
                                      table_name=job["status_table"])
    if job["failpoint"] == failpoints.CONSOLIDATION_MERGE:
        target = runtime.clients[consolidation.target.connection].get_container_client(consolidation.target.container)
        prefix = consolidation.target.path + "/"

        def data_files() -> set[str]:
            return {b.name for b in target.list_blobs(name_starts_with=prefix) if "/_delta_log/" not in b.name}

        def watch() -> None:
            before = data_files()
            while True:
                if data_files() - before:
                    _kill()  # a data file is written, its commit is not
                time.sleep(0.002)

        failpoints.arm(failpoints.CONSOLIDATION_MERGE, after=job["after"],
                       action=lambda: threading.Thread(target=watch, daemon=True).start())
        failpoints.arm(failpoints.CONSOLIDATION_COMMITTED, after=job["after"], action=_kill)
    else:
        failpoints.arm(job["failpoint"], after=job["after"], action=_kill)
    run_consolidation(runtime, consolidation, status, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
