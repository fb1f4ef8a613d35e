"""Timer %CONSOLIDATION_SCHEDULE% -> shared.consolidation.run: merge regional tables into their global tables."""

import logging

import azure.functions as func

from shared.consolidation.run import run_consolidation
from shared.errors import ReplicaBusy
from shared.runtime import get_runtime

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("consolidate_regions")
@bp.timer_trigger(arg_name="timer", schedule="%CONSOLIDATION_SCHEDULE%", run_on_startup=False)
def consolidate_regions(timer: func.TimerRequest) -> None:
    runtime = get_runtime()
    with runtime.invocation("consolidate_regions"):  # its deadline reaches every storage request
        for consolidation in runtime.config.consolidations:
            try:
                outcomes = run_consolidation(runtime, consolidation, runtime.consolidation_status(),
                                             runtime.alert_publisher())
            except ReplicaBusy as err:
                log.warning("consolidate_regions.busy consolidation=%s detail=%s", consolidation.name, err)
                continue
            except Exception:  # noqa: BLE001 - one consolidation's failure never blocks the later ones
                log.exception("consolidate_regions.failed consolidation=%s", consolidation.name)
                continue
            failing = [f"{o.source}:{o.status}" for o in outcomes if o.status in ("unreachable", "error")]
            log.info("consolidate_regions.done consolidation=%s sources=%d rows=%d past_due=%s failing=%s",
                     consolidation.name, len(outcomes), sum(o.rows_inserted + o.rows_updated for o in outcomes),
                     timer.past_due, ",".join(failing) or "none")
