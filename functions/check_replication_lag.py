"""Timer %LAG_CHECK_SCHEDULE% -> shared.app.lag_check: heal, measure, record status, alert."""

import logging

import azure.functions as func

from shared.app.lag_check import check_replication
from shared.runtime import get_runtime

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("check_replication_lag")
@bp.timer_trigger(arg_name="timer", schedule="%LAG_CHECK_SCHEDULE%", run_on_startup=False)
def check_replication_lag(timer: func.TimerRequest) -> None:
    runtime = get_runtime()
    with runtime.invocation("check_replication_lag"):  # its deadline reaches every storage request
        lags = check_replication(runtime, runtime.status_store(), runtime.alert_publisher())
        unhealthy = [f"{lag.table}/{lag.replica}:{lag.status.value}" for lag in lags if lag.status.value != "healthy"]
        log.info("check_replication_lag.done replicas=%d past_due=%s unhealthy=%s", len(lags), timer.past_due,
                 ",".join(unhealthy) or "none")
