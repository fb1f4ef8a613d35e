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
    rows = [row.as_json() for row in runtime.status_store().list_rows(table=table)]
    consolidations = runtime.consolidation_status().list_rows() if runtime.config.consolidations else []
    body = {"replicas": rows, "consolidations": [row.as_json() for row in consolidations]}
    return func.HttpResponse(json.dumps(body), status_code=200, mimetype="application/json")
