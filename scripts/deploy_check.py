"""The requirements-only check: the deployed app imports, indexes and works with requirements.txt alone.

Run by scripts/deploy_check.sh with the `.venv-deploy` interpreter in isolated mode (`-I`) from the
unpacked deployment zip, so nothing of the checkout (tests, devtools, the development packages) is on
the import path. Azurite is started from the checkout (devtools/azurite.py is loaded by file path; it
uses only the standard library) and stopped by PID at the end.

Usage: python -I scripts/deploy_check.py APP_DIR
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent


def fail(message: str) -> None:
    print(f"deploy check FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def load_azurite():
    spec = importlib.util.spec_from_file_location("deploy_check_azurite", REPO / "devtools" / "azurite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def check_index() -> None:
    """Every function, trigger, route and binding exactly as the contract (scripts/function_index.json)."""
    import function_app

    expected = json.loads((SCRIPTS / "function_index.json").read_text())
    indexed = {f.get_function_name(): json.loads(f.get_function_json())["bindings"]
               for f in function_app.app.get_functions()}
    if indexed != expected:
        fail(f"the function index differs from scripts/function_index.json:\n  got      {indexed}\n  expected {expected}")
    print(f"deploy check: index ok ({len(indexed)} functions: {', '.join(sorted(indexed))})")


def run_end_to_end(azurite) -> None:
    """One replication (a real Event Grid event to replicate_commit) and one consolidation (the timer)."""
    import azure.functions as func
    import pyarrow as pa
    from azure.functions.timer import TimerRequest
    from azure.storage.blob import BlobServiceClient
    from deltalake import DeltaTable, write_deltalake

    container = f"deploy-{uuid.uuid4().hex[:10]}"
    env = {
        "AzureWebJobsStorage": azurite.connection_string("devstoreaccount1"),
        "EASTUS_STORAGE": azurite.connection_string("eastus"),
        "WESTEU_STORAGE": azurite.connection_string("westeu"),
        "GLOBAL_STORAGE": azurite.connection_string("global"),
    }
    config = {
        "tables": [{
            "name": "sales",
            "source": {"connection": "EASTUS_STORAGE", "container": container, "path": "sales", "region": "eastus"},
            "replicas": [{"name": "westeu", "connection": "WESTEU_STORAGE", "container": container, "path": "sales"}],
        }],
        "consolidations": [{
            "name": "sales-global", "sources": ["sales"],
            "target": {"connection": "GLOBAL_STORAGE", "container": container, "path": "sales_global",
                       "region": "global"},
            "keys": ["id", "source_region"],
        }],
    }
    os.environ.update(env)
    os.environ["REPLICATION_CONFIG"] = json.dumps(config)
    BlobServiceClient.from_connection_string(env["EASTUS_STORAGE"]).create_container(container)

    uri = f"az://{container}/sales"
    data = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "amount": pa.array([1.0, 2.0, 3.0])})
    write_deltalake(uri, data, mode="overwrite", storage_options=azurite.storage_options("eastus"))
    write_deltalake(uri, data.slice(0, 1).set_column(0, "id", pa.array([4], pa.int64())), mode="append",
                    storage_options=azurite.storage_options("eastus"))

    from functions.consolidate_regions import consolidate_regions
    from functions.replicate_commit import replicate_commit
    from shared.replication.events import blob_created_envelope

    blob = f"sales/_delta_log/{1:020d}.json"
    envelope = blob_created_envelope("eastus", f"{azurite.endpoint('eastus')}/{container}/{blob}", container, blob,
                                     size=0, etag="0x0")
    replicate_commit(func.EventGridEvent(
        id=envelope["id"], data=envelope["data"], topic=envelope["topic"], subject=envelope["subject"],
        event_type=envelope["eventType"], event_time=datetime.now(timezone.utc), data_version=""))
    replica = DeltaTable(uri, storage_options=azurite.storage_options("westeu"))
    ids = sorted(replica.to_pyarrow_table().column("id").to_pylist())
    if replica.version() != 1 or ids != [1, 2, 3, 4]:
        fail(f"replication: the replica is at version {replica.version()} with ids {ids}; expected 1 and [1, 2, 3, 4]")
    print("deploy check: replication ok (replicate_commit, 2 versions)")

    consolidate_regions(TimerRequest(past_due=False))
    target = DeltaTable(f"az://{container}/sales_global", storage_options=azurite.storage_options("global"))
    rows = sorted((r["source_region"], r["id"]) for r in target.to_pyarrow_table().to_pylist())
    if rows != [("eastus", i) for i in (1, 2, 3, 4)]:
        fail(f"consolidation: the global table holds {rows}")
    print("deploy check: consolidation ok (consolidate_regions, 4 rows)")


def main() -> None:
    app_dir = Path(sys.argv[1]).resolve()
    shipped = sorted(p.name for p in app_dir.iterdir())
    leaked = [name for name in ("tests", "bench", "devtools", ".venv", "node_modules", "local.settings.json")
              if name in shipped]
    if leaked or "function_app.py" not in shipped:
        fail(f"the deployment zip holds {shipped}; .funcignore must keep out {leaked} and keep function_app.py")
    sys.path.insert(0, str(app_dir))
    os.chdir(app_dir)
    try:
        check_index()
    except ImportError as err:
        fail(f"import function_app: {type(err).__name__}: {err}. A deployment installs requirements.txt alone: "
             "add the missing package there (pinned).")
    for module in list(sys.modules.values()):
        origin = getattr(module, "__file__", None) or ""
        if module.__name__ != "__main__" and origin.startswith(str(REPO) + os.sep) \
                and not origin.startswith(str(app_dir)) and "/.venv-deploy/" not in origin:
            fail(f"{module.__name__} was imported from the checkout ({origin}), not from the deployment")
    azurite_module = load_azurite()
    azurite = azurite_module.AzuriteProcess(("eastus", "westeu", "global"), with_table=True).start()
    try:
        run_end_to_end(azurite)
    finally:
        from shared.runtime import reset_runtime

        reset_runtime()
        azurite.close()


if __name__ == "__main__":
    main()
