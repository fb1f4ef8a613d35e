"""The Functions app: one Blueprint per module in functions/."""

import azure.functions as func

from functions import replicate_commit

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(replicate_commit.bp)
