"""Fuzz: generated hostile commits, checkpoints and sidecars never make anything land outside a table root.

Two layers (see README, Path safety):
- the pure check (`referenced_files`, `sidecar_name`): 10,000 generated commits, each with many hostile
  actions (add, remove, cdc, deletion vectors 'p' and 'u') and a checkpoint's sidecars; every path it
  accepts resolves inside the table root, outside `_delta_log`;
- the full path on Azurite: a few hundred generated commits delivered as events through replication,
  generated v2 checkpoints with hostile sidecars through replication, and generated commits through
  a consolidation run; afterwards no account holds a blob that was not there before.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import random
import uuid
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.events import blob_created_event
from shared.delta.log import TableRoot, referenced_files, sidecar_name
from shared.errors import InvalidCommit
from tests.support.lake import Lake, batch
from tests.support.regions import Regions, orders

# The full-path counts are small by default (suite budget); set them to run the long sweep once.
REPLICATION_COMMITS = int(os.environ.get("FUZZ_REPLICATION_COMMITS", "300"))
CONSOLIDATION_COMMITS = int(os.environ.get("FUZZ_CONSOLIDATION_COMMITS", "40"))
REPLICATION_CHECKPOINTS = int(os.environ.get("FUZZ_REPLICATION_CHECKPOINTS", "60"))

ROOT = TableRoot("eastus", "lake", "delta/sales")

_PIECES = ["..", ".", "%2e%2e", "%2E%2E", "%252e%252e", "%2f", "%2F", "%252f", "\\", "%5c", "%5C", "\x00", "%00",
           "_delta_log", "other", "x.parquet", "a=b", "%25", "", "/", "//", "~", "...", ". .", "\u2024\u2024"]
_ABSOLUTE = ["https://other.blob.core.windows.net/lake/delta/sales/", "https://eastus.blob.core.windows.net/other/",
             "abfss://lake@other.dfs.core.windows.net/delta/sales/", "abfss://other@eastus.dfs.core.windows.net/",
             "http://127.0.0.1:10000/other/lake/delta/sales/", "https://eastus.blob.core.windows.net/lake/delta/",
             "https://eastus.blob.core.windows.net/lake/delta/sales/", "az://lake/delta/sales/", "file:///etc/"]


@st.composite
def hostile_path(draw) -> str:
    parts = draw(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=8))
    sep = draw(st.sampled_from(["/", "%2f", "\\", "/./", "//"]))
    path = sep.join(parts)
    if draw(st.booleans()):
        path = draw(st.sampled_from(_ABSOLUTE)) + path
    if draw(st.integers(0, 20)) == 0:
        path += "x" * draw(st.integers(900, 1200))  # over-long names
    return path


def _dv(path: str, kind: str) -> dict:
    return {"storageType": kind, "pathOrInlineDv": path if kind == "p" else path[:40] + "0" * 20,
            "offset": 1, "sizeInBytes": 4, "cardinality": 1}


@st.composite
def hostile_commit(draw) -> list[dict]:
    actions = []
    for path in draw(st.lists(hostile_path(), min_size=4, max_size=12)):
        kind = draw(st.sampled_from(["add", "remove", "cdc", "dv_p", "dv_u"]))
        if kind.startswith("dv_"):
            actions.append({"add": {"path": "ok.parquet", "size": 1, "deletionVector": _dv(path, kind[-1])}})
        else:
            actions.append({kind: {"path": path, "size": 1, "dataChange": True}})
    return actions


def inside_root(rel: str) -> bool:
    full = posixpath.normpath(f"{ROOT.path}/{rel}")
    decoded = posixpath.normpath(f"{ROOT.path}/{unquote(rel)}")
    return all(p.startswith(ROOT.path + "/") and not (p + "/").startswith(f"{ROOT.path}/_delta_log/")
               and "\\" not in p and "\x00" not in p and len(p) <= 1024 for p in (full, decoded))


def check_commit_and_sidecars(commit: list[dict], sidecars: list[str]) -> None:
    for action in commit:  # each action alone: one refused action must not hide another accepted one
        try:
            files = referenced_files([action], ROOT, allow_external=False, where="fuzz")
        except InvalidCommit:
            continue
        assert all(inside_root(f.path) for f in files), (action, files)
    for raw in sidecars:
        try:
            name = sidecar_name(raw, ROOT, where="fuzz")
        except InvalidCommit:
            continue
        assert "/" not in name[len("_sidecars/"):] and inside_root("_delta_log_x/" + name), raw


# Hypothesis explores and shrinks (500 examples of 4-12 actions); the seeded generator below feeds the
# 10,000 commits (hypothesis's per-draw overhead made 10,000 examples take minutes on 2 shared cores).
@settings(max_examples=500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(commit=hostile_commit(), sidecars=st.lists(hostile_path(), min_size=1, max_size=4))
def test_hypothesis_hostile_commits_and_sidecars_never_resolve_outside_the_table(commit, sidecars):
    check_commit_and_sidecars(commit, sidecars)


def test_ten_thousand_generated_hostile_commits_checkpoints_and_sidecars_never_resolve_outside_the_table():
    rng = random.Random(2222)
    commits = generated(10_000, seed=22_000)
    for actions in commits:
        sidecars = [random_path(rng) for _ in range(rng.randint(1, 4))]
        check_commit_and_sidecars(actions, sidecars)
        # The same actions as a checkpoint's adds: the check is the same function.
        check_commit_and_sidecars([{"add": a["add"]} for a in actions if "add" in a], [])
    assert len(commits) == 10_000


def random_path(rng: random.Random) -> str:
    parts = [rng.choice(_PIECES) for _ in range(rng.randint(1, 8))]
    path = rng.choice(["/", "%2f", "\\", "/./", "//"]).join(parts)
    if rng.random() < 0.4:
        path = rng.choice(_ABSOLUTE) + path
    if rng.random() < 0.05:
        path += "x" * rng.randint(900, 1200)
    return path


def generated(count: int, seed: int) -> list[list[dict]]:
    """Deterministic hostile commits drawn from the same strategy, for the full path."""
    rng = random.Random(seed)
    commits = []
    for _ in range(count):
        actions = []
        for _ in range(rng.randint(3, 8)):
            path = random_path(rng)
            kind = rng.choice(["add", "cdc", "remove", "dv_p", "dv_u"])
            if kind.startswith("dv_"):
                actions.append({"add": {"path": "ok.parquet", "size": 1, "deletionVector": _dv(path, kind[-1])}})
            else:
                actions.append({kind: {"path": path, "size": 1, "dataChange": True}})
        # One action that certainly escapes, so every commit is hostile.
        actions.append({"add": {"path": rng.choice(["../../other/x.parquet", "a/%2E%2E/%2E%2E/%2E%2E/x.parquet",
                                                    "https://other.blob.core.windows.net/lake/x.parquet"]),
                                "size": 1, "dataChange": True}})
        commits.append(actions)
    return commits


def everything(lake: Lake) -> dict:
    out = {}
    for account, client in lake.clients.items():
        for container in client.list_containers():
            cc = client.get_container_client(container.name)
            out.update({(account, container.name, b.name): b.etag for b in cc.list_blobs()})
    return out


def test_hostile_commits_and_checkpoints_through_replication_write_nothing_anywhere(lake, caplog):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    lake.write(batch(5, 5), partition_by=["region"])
    lake.deliver_all(lake.events())
    before = everything(lake)
    cc = lake.clients["eastus"].get_container_client(lake.container)
    caplog.set_level(logging.ERROR)
    commit_blob = f"{lake.table_path}/_delta_log/{2:020d}.json"
    for actions in generated(REPLICATION_COMMITS, seed=22):
        cc.upload_blob(commit_blob, "".join(json.dumps(a) + "\n" for a in actions).encode(), overwrite=True)
        result = lake.deliver(blob_created_event("eastus", lake.container, commit_blob, azurite_port=lake.azurite.port))
        assert {type(o.error) for o in result.outcomes} == {InvalidCommit}
    cc.delete_blob(commit_blob)
    rng = random.Random(23)
    for _ in range(REPLICATION_CHECKPOINTS):
        name = f"{lake.table_path}/_delta_log/{1:020d}.checkpoint.{uuid.uuid4()}.json"
        sidecar = rng.choice(["../../../../other/_delta_log/00000000000000000000.json", "..%2f..%2fx.parquet",
                              "https://other.blob.core.windows.net/lake/delta/sales/_delta_log/_sidecars/a.parquet",
                              "a/../../b.parquet", "%2e%2e.parquet/..", "x\\..\\y.parquet"]) \
            if rng.random() < 0.5 else random_path(rng)
        adds = generated(1, seed=rng.randint(0, 10**6))[0]
        body = [{"checkpointMetadata": {"version": 1}}, {"sidecar": {"path": sidecar, "sizeInBytes": 1}}] + \
            [a for a in adds if "add" in a]
        cc.upload_blob(name, "".join(json.dumps(a) + "\n" for a in body).encode())
        result = lake.deliver(blob_created_event("eastus", lake.container, name, azurite_port=lake.azurite.port))
        assert {type(o.error) for o in result.outcomes} == {InvalidCommit}
        cc.delete_blob(name)
    after = everything(lake)
    assert {k: v for k, v in after.items() if k[0] != "eastus"} == {k: v for k, v in before.items() if k[0] != "eastus"}


def test_hostile_commits_through_consolidation_write_nothing_to_the_global_table(azurite, request):
    regions = Regions(azurite, request.node.name, sources=[
        {"connection": "EASTUS_STORAGE", "container": "c", "path": "orders", "region": "eastus"}])
    regions.config_doc["consolidations"][0]["sources"][0]["container"] = regions.container
    try:
        regions.write("eastus", orders("eastus", range(0, 3)))
        regions.run()
        version = regions.target_version()
        cc = regions.clients["eastus"].get_container_client(regions.container)
        global_before = {b.name for b in regions.clients["global"].get_container_client(regions.container).list_blobs()}
        for actions in generated(CONSOLIDATION_COMMITS, seed=24):
            cc.upload_blob("orders/_delta_log/00000000000000000001.json",
                           "".join(json.dumps(a) + "\n" for a in actions).encode(), overwrite=True)
            outcome = regions.run()["eastus"]
            assert outcome.status == "error" and outcome.rows_read == 0, outcome.error
        assert regions.target_version() == version
        global_after = {b.name for b in regions.clients["global"].get_container_client(regions.container).list_blobs()}
        assert global_after == global_before
    finally:
        regions.close()
