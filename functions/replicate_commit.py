"""Event Grid trigger -> shared.app.commit_event: replicate the commit a storage event names."""

import logging

import azure.functions as func

from shared.app.commit_event import handle_storage_event
from shared.runtime import get_runtime

bp = func.Blueprint()
log = logging.getLogger(__name__)


def event_envelope(event: func.EventGridEvent) -> dict:
    """The Event Grid-schema envelope of a trigger event, as shared.replication.events reads it."""
    return {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": event.event_time.isoformat() if event.event_time else None,
        "dataVersion": event.data_version,
        "data": event.get_json(),
    }


@bp.function_name("replicate_commit")
@bp.event_grid_trigger(arg_name="event")
def replicate_commit(event: func.EventGridEvent) -> None:
    runtime = get_runtime()
    with runtime.invocation("replicate_commit"):  # its deadline reaches every storage request
        result = handle_storage_event(runtime, event_envelope(event))
    failures = result.retryable_failures
    if failures:
        # Raising fails the invocation so Event Grid redelivers; replicas already done are no-ops then.
        log.warning("replicate_commit.retry table=%s file=%s failed=%s", result.table, result.log_file,
                    ",".join(o.replica for o in failures))
        raise failures[0].error
