"""The Functions app: one Blueprint per module in functions/."""

import azure.functions as func

from functions import check_replication_lag, replicate_commit, replication_status

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
for module in (replicate_commit, check_replication_lag, replication_status):
    app.register_functions(module.bp)
