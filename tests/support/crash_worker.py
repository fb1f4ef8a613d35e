"""A replicator process that kills itself (SIGKILL) at an armed failpoint.

Reads one JSON document on stdin: config, environ, failpoint, after, and either event (replicate
it) or rejoin ({"table", "location"}: run a rejoin).
Exit status -9 means the failpoint fired; 0 means it was never reached.
"""

import json
import os
import signal
import sys

from shared import failpoints
from shared.config.parse import parse_config
from shared.app.commit_event import handle_storage_event
from shared.runtime import ReplicationRuntime


def main() -> int:
    job = json.load(sys.stdin)
    runtime = ReplicationRuntime(parse_config(job["config"]), job["environ"])
    failpoints.arm(job["failpoint"], after=job["after"], action=lambda: os.kill(os.getpid(), signal.SIGKILL))
    if "rejoin" in job:
        from shared.failover.rejoin import rejoin

        rejoin(runtime, job["rejoin"]["table"], job["rejoin"]["location"])
    else:
        handle_storage_event(runtime, job["event"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
