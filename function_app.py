"""The Functions app: one Blueprint per module in functions/."""

import azure.functions as func

from functions import (
    apply_retention,
    check_replication_lag,
    consolidate_regions,
    maintain_snapshots,
    replicate_commit,
    replication_status,
    resolve_table,
)
from shared.telemetry.setup import configure_telemetry

configure_telemetry()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
for module in (replicate_commit, check_replication_lag, maintain_snapshots, apply_retention, replication_status,
               resolve_table, consolidate_regions):
    app.register_functions(module.bp)
