"""The structure holds: imports point down the layers, and the storage SDK stays behind the boundary.

Layers, lowest first (README, Layout): errors and failpoints; config; telemetry; storage (the one
boundary to the storage SDK); delta (the log); the capabilities, in the order they build on each
other (replication, health measuring it, cost, maintenance, failover, reads, consolidation); the
runtime (one per host); app (the jobs the faces run); and the faces outside `shared/` (functions,
cli, function_app.py), which `shared/` never imports. A module may import its own package and any
lower layer, nothing higher. Lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["errors", "failpoints", "deadline", "executors", "config", "telemetry", "storage", "delta", "groups", "replication",
          "health", "cost",
          "maintenance", "failover", "reads", "consolidation", "runtime", "app"]
# errors, failpoints, deadline and executors are one layer (the deadline raises an error).
BOTTOM = ("errors", "failpoints", "deadline", "executors")
RANK = {name: (0 if name in BOTTOM else i) for i, name in enumerate(LAYERS)}
FACES = ("functions", "cli", "function_app", "devtools", "bench", "tests")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, top-level or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "shared":
                found += [(node.lineno, f"shared.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def shared_modules() -> list[Path]:
    return sorted(p for p in (ROOT / "shared").rglob("*.py"))


def layer_of(path: Path) -> str:
    parts = path.relative_to(ROOT / "shared").with_suffix("").parts
    return "package" if parts == ("__init__",) else parts[0]


def test_every_package_of_shared_has_a_layer():
    assert {layer_of(p) for p in shared_modules()} - {"package"} == set(LAYERS)


def test_imports_in_shared_point_down_the_layers():
    upward = []
    for path in shared_modules():
        mine = layer_of(path)
        if mine == "package":
            continue
        for line, module in imports(path):
            top = module.split(".")[0]
            if top in FACES:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {module} (a face)")
            if top != "shared" or module == "shared":
                continue
            theirs = module.split(".")[1]
            if theirs != mine and RANK[theirs] > RANK[mine]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {module} ({theirs}, a higher layer)")
    assert upward == []


@pytest.mark.parametrize("folder", ["shared", "functions", "cli"])
def test_only_the_storage_boundary_imports_the_storage_sdk(folder):
    """Either storage client library (azure-storage-blob, obstore) is imported only in shared/storage."""
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")) + ([ROOT / "function_app.py"] if folder == "functions" else []):
        if path.is_relative_to(ROOT / "shared" / "storage"):
            continue
        offenders += [f"{path.relative_to(ROOT)}:{line} imports {m}" for line, m in imports(path)
                      if m.startswith(("azure.storage", "azure.data.tables", "obstore")) and not _host_table_client(path, m)]
    assert offenders == []


def _host_table_client(path: Path, module: str) -> bool:
    """The host-storage table stores (status, topology, consolidation progress, transfers) build on
    `shared.storage.host_table.HostTable` and may name azure.data.tables' types (entities, update
    modes, transactions); blob storage is reached only through shared/storage."""
    return module.startswith("azure.data.tables")


def test_nothing_outside_the_storage_boundary_reaches_a_client():
    # A store's client (`_container`, `_service`) and the runtime's raw clients (`clients[...]`)
    # are the boundary's own; callers get stores from shared.storage.factory.Stores.
    offenders = []
    for folder in ("shared", "functions", "cli"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.is_relative_to(ROOT / "shared" / "storage"):
                continue
            owner = path == ROOT / "shared" / "runtime.py"  # owns the clients and the executors
            for node in ast.walk(ast.parse(path.read_text())):
                if owner:
                    break
                if isinstance(node, ast.Attribute) and node.attr in ("_container", "_file_pool") or (
                        isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
                        and node.value.attr == "clients"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_every_module_in_shared_is_at_most_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in shared_modules() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
