"""HTTP GET /api/tables/{table}/endpoint[?group=G&consistent=true] -> shared.reads: where a reader in a region
should read from (a group: every table of it at one location's recovery point)."""

import json

import azure.functions as func

from shared.errors import NoReadableLocation, ReplicationError
from shared.reads.group import parse_group_query, resolve_group
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
        table = runtime.table(name)
    except KeyError:
        return _json({"error": f"table {name!r} is not configured", "tables": [t.name for t in runtime.tables()]},
                     404)
    if "group" in req.params:
        return _group_read(runtime, table, req.params)
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


def _group_read(runtime, table, params) -> func.HttpResponse:
    """?group=G&consistent=true: every table of the group at one location's recovery point."""
    try:
        group, region = parse_group_query(params)
    except ValueError as err:
        return _json({"error": str(err)}, 400)
    if table.group != group:
        return _json({"error": f"table {table.name!r} is not in group {group!r}",
                      "groups": [g.name for g in runtime.config.groups]}, 404)
    try:
        return _json(resolve_group(runtime, group, region=region).as_json(), 200)
    except NoReadableLocation as err:
        return _json({"error": str(err), "group": group, "tried": [t.as_json() for t in err.tried]}, 503)
    except ReplicationError as err:
        return _json({"error": str(err), "group": group, "reason": type(err).__name__, "tried": []}, 503)
