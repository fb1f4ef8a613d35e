#!/usr/bin/env bash
# Builds the zip a deployment sends (zip deploy / `func azure functionapp publish`): every file of
# the checkout except what .funcignore names. Usage: bash scripts/package.sh [OUTPUT.zip]
# (default dist/function-app.zip). Prints the zip's path.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-dist/function-app.zip}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$(dirname "$OUT")"
"$PYTHON" - "$OUT" <<'PY'
import fnmatch
import os
import sys
import zipfile

out = os.path.abspath(sys.argv[1])
patterns = []
with open(".funcignore", encoding="utf-8") as fh:
    for line in fh:
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line.rstrip("/"))


def ignored(rel: str) -> bool:
    # .funcignore follows .gitignore: a pattern matches a name at any depth, or a path from the root.
    parts = rel.split("/")
    return any(fnmatch.fnmatch(part, p) for p in patterns for part in parts) or \
        any(fnmatch.fnmatch(rel, p) for p in patterns)


files = []
for root, dirs, names in os.walk("."):
    rel_root = os.path.relpath(root, ".").replace(os.sep, "/")
    dirs[:] = sorted(d for d in dirs if not ignored(d if rel_root == "." else f"{rel_root}/{d}"))
    for name in sorted(names):
        rel = name if rel_root == "." else f"{rel_root}/{name}"
        if not ignored(rel) and os.path.abspath(rel) != out:
            files.append(rel)
tmp = out + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
    for rel in files:
        zf.write(rel, rel)
os.replace(tmp, out)
print(out)
PY
