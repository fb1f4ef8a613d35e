"""Timer %SNAPSHOT_SCHEDULE% -> shared.maintenance.snapshots: take a snapshot per table, keep the newest keep_last."""

import logging

import azure.functions as func

from shared.runtime import get_runtime
from shared.maintenance.snapshots import maintain_table_snapshots

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("maintain_snapshots")
@bp.timer_trigger(arg_name="timer", schedule="%SNAPSHOT_SCHEDULE%", run_on_startup=False)
def maintain_snapshots(timer: func.TimerRequest) -> None:
    runtime = get_runtime()
    with runtime.invocation("maintain_snapshots"):  # its deadline reaches every storage request
        for table in runtime.tables():
            if table.snapshots is None:
                continue
            result = maintain_table_snapshots(runtime, table)
            log.info("maintain_snapshots.done table=%s created=%s version=%s kept=%d deleted=%d incomplete_removed=%d",
                     table.name, result.created, result.version, len(result.kept), len(result.deleted),
                     len(result.removed_incomplete))
