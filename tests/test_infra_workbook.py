"""The template deploys Application Insights, wires the app's metrics to it, and a workbook charting lag per
table and replica and the recovery point per group and location (issue 25) from metrics the app exports."""

from __future__ import annotations

import ast
import json
import re

from tests.support.bicep import Deployment, Opaque
from tests.test_infra_private import INFRA, example_params

ROOT = INFRA.parent


def exported_metric_names() -> set[str]:
    """The instrument names shared/telemetry/metrics.py creates."""
    tree = ast.parse((ROOT / "shared" / "telemetry" / "metrics.py").read_text())
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "").startswith("create_")
            and node.args and isinstance(node.args[0], ast.Constant)}


def test_the_workbook_charts_only_metrics_the_app_exports_and_both_views_are_there():
    doc = json.loads((INFRA / "workbook.json").read_text())
    assert doc["version"] == "Notebook/1.0"
    queries = [item["content"]["query"] for item in doc["items"] if item["type"] == 3]
    used = {m for q in queries for m in re.findall(r'name == "([^"]+)"', q)}
    assert used == {"replication.group_recovery_point_age_seconds", "replication.lag_seconds",
                    "replication.version_lag"}
    assert used <= exported_metric_names()
    by_metric = {re.search(r'name == "([^"]+)"', q).group(1): q for q in queries}
    assert 'customDimensions["group"]' in by_metric["replication.group_recovery_point_age_seconds"]
    assert 'customDimensions["table"]' in by_metric["replication.lag_seconds"]
    assert all("render timechart" in q for q in queries)


def test_the_template_deploys_insights_the_workbook_on_it_and_the_apps_connection_to_it():
    d = Deployment(INFRA / "main.bicep", {**example_params(), "privateNetworking": False})
    (insights,) = d.of_type("Microsoft.Insights/components")
    (workbook,) = d.of_type("Microsoft.Insights/workbooks")
    assert (workbook.body["kind"], workbook.body["properties"]["category"]) == ("shared", "workbook")
    assert workbook.body["properties"]["sourceId"] == insights.id
    assert workbook.body["properties"]["serializedData"] == Opaque("loadTextContent(workbook.json)")
    (app,) = d.of_type("Microsoft.Web/sites")
    settings = {s["name"]: s["value"] for s in app.body["properties"]["siteConfig"]["appSettings"]}
    assert isinstance(settings["APPLICATIONINSIGHTS_CONNECTION_STRING"], Opaque)
    assert "insights" in settings["APPLICATIONINSIGHTS_CONNECTION_STRING"].text
