"""HTTP GET /api/status[?table=] -> shared.health.status: the ReplicationStatus rows (and ConsolidationStatus) as JSON."""

import json

import azure.functions as func

from shared.runtime import get_runtime

bp = func.Blueprint()


@bp.function_name("replication_status")
@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def replication_status(req: func.HttpRequest) -> func.HttpResponse:
    runtime = get_runtime()
    table = req.params.get("table")
    if table is not None and table not in {t.name for t in runtime.config.tables}:
        body = {"error": f"table {table!r} is not configured", "tables": [t.name for t in runtime.config.tables]}
        return func.HttpResponse(json.dumps(body), status_code=404, mimetype="application/json")
    # Configured tables and consolidations only: the function app's storage may hold rows of a table
    # no longer configured (or of another app sharing it), which this app neither heals nor alerts on.
    tables = {t.name for t in runtime.config.tables}
    rows = [row.as_json() for row in runtime.status_store().list_rows(table=table) if row.table in tables]
    names = {c.name for c in runtime.config.consolidations}
    consolidations = [row for row in runtime.consolidation_status().list_rows() if row.consolidation in names] \
        if names else []
    body = {"replicas": rows, "consolidations": [row.as_json() for row in consolidations]}
    return func.HttpResponse(json.dumps(body), status_code=200, mimetype="application/json")
