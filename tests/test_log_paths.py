"""One path check for everything read from a log: a hostile checkpoint, sidecar or commit is refused once,
not retried, and writes nothing anywhere, whatever kind of connection the replicas use (key, SAS,
identity-shaped)."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

from devtools.azurite import account_key
from devtools.events import blob_created_event
from shared.delta.log import TableRoot, referenced_files
from shared.errors import InvalidCommit
from shared.replication.outcome import ReplicaState
from tests.support.lake import Lake, batch
from tests.support.regions import Regions, orders

ACCOUNTS = ("eastus", "westeu", "seasia")
HOSTILE_SIDECAR = "../../../../other/_delta_log/00000000000000000000.json"


def everything(lake: Lake) -> dict:
    return {a: lake.blobs(a) for a in ACCOUNTS}


def sas_connection(lake: Lake, account: str) -> str:
    sas = generate_account_sas(account, account_key(account), ResourceTypes(service=True, container=True, object=True),
                               AccountSasPermissions(read=True, write=True, list=True, create=True, delete=True,
                                                     add=True),
                               expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    return f"BlobEndpoint={lake.processes[account].endpoint(account)};SharedAccessSignature={sas}"


def use_connections(lake: Lake, kind: str) -> None:
    """Point the replicas' connection settings at key, SAS or identity-shaped settings."""
    for account in ("westeu", "seasia"):
        name = f"{account.upper()}_STORAGE"
        if kind == "sas":
            lake.environ[name] = sas_connection(lake, account)
        elif kind == "identity":
            del lake.environ[name]
            # https (the SDK refuses tokens over http): a request would fail, so only a refusal made
            # before any request to the replicas gives InvalidCommit.
            lake.environ[f"{name}__blobServiceUri"] = lake.processes[account].endpoint(account).replace("http:", "https:")


def put(lake: Lake, name: str, data: bytes) -> None:
    lake.clients["eastus"].get_blob_client(lake.container, name).upload_blob(data, overwrite=True)


@pytest.mark.parametrize("kind", ["key", "sas", "identity"])
def test_a_checkpoint_naming_a_sidecar_outside_the_table_is_refused_once_and_writes_nothing(lake, kind, caplog):
    use_connections(lake, kind)
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.write(batch(5, 5), partition_by=["region"])
    if kind != "identity":  # identity-shaped connections cannot authenticate to Azurite: nothing to catch up
        lake.deliver_all(lake.events())
        assert lake.head("westeu") == 1
    # Another table at the container's root: the sidecar path climbs to it.
    put(lake, "other/_delta_log/00000000000000000000.json", b'{"commitInfo": {"operation": "SECRET"}}\n')
    checkpoint = f"{lake.table_path}/_delta_log/{1:020d}.checkpoint.{uuid.uuid4()}.json"
    actions = [{"checkpointMetadata": {"version": 1}},
               {"sidecar": {"path": HOSTILE_SIDECAR, "sizeInBytes": 40, "modificationTime": 1}}]
    put(lake, checkpoint, "".join(json.dumps(a) + "\n" for a in actions).encode())
    put(lake, f"{lake.table_path}/_delta_log/_last_checkpoint",
        json.dumps({"version": 1, "size": 2, "v2Checkpoint": {"path": checkpoint.rsplit("/", 1)[1]}}).encode())
    before = everything(lake)
    caplog.clear()
    caplog.set_level(logging.INFO)
    result = lake.deliver(blob_created_event("eastus", lake.container, checkpoint, azurite_port=lake.azurite.port))
    assert [(o.replica, o.state, type(o.error), o.retryable) for o in result.outcomes] == \
        [(r, ReplicaState.ERROR, InvalidCommit, False) for r in ("westeu", "seasia")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"checkpoint.rejected table=sales version=1 file={checkpoint.rsplit('/', 1)[1]} ")
    assert "sidecar path '../../../../other" in warnings[0]
    assert everything(lake) == before


def test_consolidation_refuses_a_commit_whose_add_climbs_into_another_table(azurite, request, caplog):
    regions = Regions(azurite, request.node.name, sources=[
        {"connection": "EASTUS_STORAGE", "container": "c", "path": "orders", "region": "eastus"}])
    regions.config_doc["consolidations"][0]["sources"][0]["container"] = regions.container
    try:
        regions.write("eastus", orders("eastus", range(0, 3)))
        regions.run()
        # Another regional table in the same container, with rows that must never reach the global table.
        from deltalake import write_deltalake

        write_deltalake(regions.uri("secret"), orders("eastus", range(900, 905)), mode="overwrite",
                        storage_options=regions.options("eastus"))
        container = regions.clients["eastus"].get_container_client(regions.container)
        secret_file = next(b.name for b in container.list_blobs(name_starts_with="secret/") if b.name.endswith(".parquet"))
        add = {"path": "%2E%2E/" + secret_file, "partitionValues": {}, "size": 1, "modificationTime": 0,
               "dataChange": True}
        container.upload_blob("orders/_delta_log/00000000000000000001.json",
                              (json.dumps({"commitInfo": {"operation": "WRITE"}}) + "\n" + json.dumps({"add": add})).encode())
        version = regions.target_version()
        caplog.set_level(logging.WARNING)
        outcome = regions.run()["eastus"]
        assert outcome.status == "error" and "not a file inside the table" in outcome.error
        assert regions.target_version() == version  # nothing written to the global table
        assert sorted(r["transaction_id"] for r in regions.global_rows()) == [0, 1, 2]
        assert len([r for r in caplog.records if r.getMessage().startswith("consolidation.source_done")
                    and "status=error" in r.getMessage()]) == 1
    finally:
        regions.close()


ROOT = TableRoot("eastus", "lake", "delta/sales")


@pytest.mark.parametrize("action", [
    {"remove": {"path": "../other/x.parquet"}},
    {"cdc": {"path": "a/%252e%252e/x.parquet"}},
    {"add": {"path": "a/b.parquet", "deletionVector": {"storageType": "p", "pathOrInlineDv": "../../x.bin"}}},
    {"add": {"path": "a/b.parquet", "deletionVector": {"storageType": "u",
                                                        "pathOrInlineDv": ".." + "0" * 20}}},
    {"add": {"path": "https://other.blob.core.windows.net/lake/delta/sales/x.parquet"}},
    {"add": {"path": "abfss://other@eastus.dfs.core.windows.net/delta/sales/x.parquet"}},
    {"add": {"path": "a\x00b.parquet"}},
    {"add": {"path": "x" * 1100}},
    {"add": {"path": "a%5C..%5Cb.parquet"}},
])
def test_every_kind_of_path_read_from_a_log_goes_through_the_check(action):
    with pytest.raises(InvalidCommit):
        referenced_files([action], ROOT, allow_external=False, where="table sales version 3")


@pytest.mark.parametrize("raw", [HOSTILE_SIDECAR, "a/b.parquet", "..parquet", "%2e%2e%2fx.parquet",
                                 "https://eastus.blob.core.windows.net/lake/delta/other/_delta_log/_sidecars/x.parquet"])
def test_sidecars_are_plain_names_in_the_tables_own_sidecar_folder(raw):
    from shared.delta.log import sidecar_name

    with pytest.raises(InvalidCommit):
        sidecar_name(raw, ROOT, where="checkpoint")


def test_sidecar_names_and_uris_inside_the_folder_are_accepted():
    from shared.delta.log import sidecar_name

    assert sidecar_name("0001-abc.parquet", ROOT, where="c") == "_sidecars/0001-abc.parquet"
    assert sidecar_name("https://eastus.blob.core.windows.net/lake/delta/sales/_delta_log/_sidecars/x.parquet", ROOT,
                        where="c") == "_sidecars/x.parquet"
