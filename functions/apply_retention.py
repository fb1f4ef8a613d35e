"""Timer %RETENTION_SCHEDULE% -> shared.maintenance.retention: propagate VACUUM and log cleanup to replicas."""

import logging

import azure.functions as func

from shared.maintenance.retention import apply_retention as apply_all
from shared.runtime import get_runtime

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("apply_retention")
@bp.timer_trigger(arg_name="timer", schedule="%RETENTION_SCHEDULE%", run_on_startup=False)
def apply_retention(timer: func.TimerRequest) -> None:
    runtime = get_runtime()
    with runtime.invocation("apply_retention"):  # its deadline reaches every storage request
        for result in apply_all(runtime, status=runtime.status_store()):
            log.info("apply_retention.done table=%s replica=%s dry_run=%s keep_from_version=%s log_files=%d "
                     "data_files=%d bytes_freed=%d", result.table, result.replica, result.dry_run, result.keep_from_version,
                     len(result.log_files), len(result.data_files), result.bytes_freed)
