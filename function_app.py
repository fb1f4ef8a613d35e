"""The Functions app: one Blueprint per module in functions/."""

import azure.functions as func

from functions import replicate_commit

app = func.FunctionApp()
app.register_functions(replicate_commit.bp)
