"""HTTP GET /api/status[?table=|?group=] -> shared.health.status: the ReplicationStatus rows (and ConsolidationStatus) as JSON."""

import json

import azure.functions as func

from shared.app.group_status import stored_group_status
from shared.runtime import get_runtime

bp = func.Blueprint()


@bp.function_name("replication_status")
@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def replication_status(req: func.HttpRequest) -> func.HttpResponse:
    runtime = get_runtime()
    group = req.params.get("group")
    if group is not None:
        body = stored_group_status(runtime, group)
        if body is None:
            body = {"error": f"group {group!r} is not configured", "groups": [g.name for g in runtime.config.groups]}
            return func.HttpResponse(json.dumps(body), status_code=404, mimetype="application/json")
        return func.HttpResponse(json.dumps(body), status_code=200, mimetype="application/json")
    table = req.params.get("table")
    if table is not None and not runtime.is_configured(table):
        body = {"error": f"table {table!r} is not configured", "tables": [t.name for t in runtime.tables()]}
        return func.HttpResponse(json.dumps(body), status_code=404, mimetype="application/json")
    # Configured tables and consolidations only: the function app's storage may hold rows of a table
    # no longer configured (or of another app sharing it), which this app neither heals nor alerts on.
    rows = [row.as_json() for row in runtime.status_store().list_rows(table=table) if runtime.is_configured(row.table)]
    names = {c.name for c in runtime.config.consolidations}
    consolidations = [row for row in runtime.consolidation_status().list_rows() if row.consolidation in names] \
        if names else []
    body = {"replicas": rows, "consolidations": [row.as_json() for row in consolidations]}
    return func.HttpResponse(json.dumps(body), status_code=200, mimetype="application/json")
