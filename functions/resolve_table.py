"""HTTP GET /api/tables/{table}/endpoint -> shared.reads: where a reader in a region should read from."""

import json

import azure.functions as func

from shared.errors import NoReadableLocation, ReplicationError
from shared.reads.query import parse_read_query
from shared.reads.resolver import resolve_location
from shared.runtime import get_runtime

bp = func.Blueprint()


def _json(body: dict, status: int) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


@bp.function_name("resolve_table")
@bp.route(route="tables/{table}/endpoint", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def resolve_table(req: func.HttpRequest) -> func.HttpResponse:
    runtime = get_runtime()
    name = req.route_params.get("table", "")
    try:
        table = runtime.config.table(name)
    except KeyError:
        return _json({"error": f"table {name!r} is not configured", "tables": [t.name for t in runtime.config.tables]},
                     404)
    try:
        query = parse_read_query(req.params)
    except ValueError as err:
        return _json({"error": str(err)}, 400)
    try:
        return _json(resolve_location(runtime, table, **query.resolver_arguments()).as_json(), 200)
    except NoReadableLocation as err:
        return _json({"error": str(err), "table": name, "tried": [t.as_json() for t in err.tried]}, 503)
    except ReplicationError as err:
        # e.g. TopologyUnavailable: no location can be named safely now; the reason, never a 500.
        return _json({"error": str(err), "table": name, "reason": type(err).__name__, "tried": []}, 503)
