"""The README's runbook runs as written: `scripts/dev.sh`, then the runbook's commands, in order.

A full local drill on the dev environment: an outage commit on eastus that never reaches westeu (the
relay is held: replication is not delivered), then an unplanned failover to westeu, which fences eastus
(it still answers): a writer that never heard of the failover is refused there; writes on the new
primary; the old region diverged in `status`; a promote back refused at once ("run rejoin first");
rejoin (dry run, then for real: the outage commit and the fence quarantined); the quarantined commit
listed (the fence skipped) and replayed (twice: exactly once); a planned failback, which fences westeu,
and its rejoin; a write on eastus again. After every write each location that is not fenced reaches the
new version (the relay follows the primary).

Each `$ python -m cli ...` block of the README's runbook (and the endpoint and cost examples) must be a
command this drill runs, in the same order, and its output must have the same shape as what the
command printed here: numbers, sizes and column padding aside, line for line.
Set RUNBOOK_RECORD=<file> to write the transcript instead (to paste into the README).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from devtools.azurite import free_port
from devtools.dev import READY_PREFIX
from tests.scenarios.test_dev_env import REPO, DevRun, clean_env, dev_runs  # noqa: F401 - dev_runs: fixture

README = REPO / "README.md"
URI = "az://lake/delta/sales"

# ("cli", args) runs `python -m cli <args>`; ("write", location) appends one commit there;
# ("refused", location) checks a write there is refused by the fence and changes nothing;
# ("relay", "hold" | "release") stops / continues the relay (SIGSTOP / SIGCONT): what is committed
# in between is not delivered until the release;
# ("wait", {location: version or "diverged"}) polls `status --json` until every location is so.
DRILL = [
    ("cli", "status --table sales"),
    ("relay", "hold"),
    ("write", "eastus"),  # the outage: eastus accepts a commit that never reaches westeu
    ("cli", "promote --table sales --to westeu --force"),
    ("relay", "release"),
    ("refused", "eastus"),  # a writer that never heard of the failover: the fence refuses it
    ("cli", "endpoint --table sales --purpose write"),
    ("write", "westeu"),
    ("write", "westeu"),
    ("wait", {"eastus": "diverged", "seasia": 4}),
    ("cli", "status --table sales"),
    ("cli", "promote --table sales --to eastus"),
    ("cli", "rejoin --table sales --location eastus --dry-run"),
    ("cli", "rejoin --table sales --location eastus"),
    ("wait", {"eastus": 4, "seasia": 4}),
    ("cli", "quarantine list --table sales"),
    ("cli", "quarantine replay --table sales --epoch 1"),
    ("cli", "quarantine replay --table sales --epoch 1"),
    ("wait", {"eastus": 5, "seasia": 5}),
    ("cli", "promote --table sales --to eastus --timeout 60"),
    ("refused", "westeu"),  # the planned failback fences westeu too
    ("cli", "endpoint --table sales --purpose write"),
    ("cli", "rejoin --table sales --location westeu"),  # removes the fence; westeu is a replica again
    ("write", "eastus"),
    ("wait", {"westeu": 6, "seasia": 6}),
    ("cli", "status --table sales"),
    ("cli", "endpoint --table sales --region westeu"),
    ("cli", "cost"),
    ("cli", "cost --plan --size-gb 1024 --regions eastus,westeu,seasia --daily-change-gb 10"),
]


def shape(text: str) -> list[str]:
    """Lines with numbers, sizes and padding taken out; repeated lines (progress) counted once."""
    lines: list[str] = []
    for line in text.splitlines():
        line = re.sub(r"\b\d+(\.\d+)? (B|KiB|MiB|GiB|TiB)\b", "SIZE", line)
        line = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", line)
        line = " ".join(line.split())
        if line and (not lines or lines[-1] != line):
            lines.append(line)
    return lines


def readme_examples() -> list[tuple[str, str]]:
    """(command, output) for every `$ python -m cli ...` example in the README, in order: in indented
    blocks the output is the indented lines that follow; in fenced blocks, the lines up to the fence."""
    examples, current, fenced, mode = [], None, False, None
    for raw in README.read_text().splitlines():
        if raw.startswith("```"):
            fenced, current = not fenced, None
            continue
        text = raw[4:] if not fenced and raw.startswith("    ") else raw
        if text.startswith("$ python -m cli "):
            current = [text[len("$ python -m cli "):], []]
            examples.append(current)
            mode = "fence" if fenced else "indent"
        elif current is not None:
            if mode == "fence" or raw.startswith("    ") or not raw.strip():
                current[1].append(text)
            else:
                current = None
    return [(cmd, "\n".join(out)) for cmd, out in examples]


def cli(settings: Path, args: str) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-m", "cli", "--settings", str(settings), *shlex.split(args)],
                            cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=180)
    return result.returncode, result.stdout


def status_rows(settings: Path) -> dict:
    code, out = cli(settings, "status --json")
    assert code in (0, 1), out
    return {r["replica"]: r for r in json.loads(out)["replicas"]}


def wait_for(settings: Path, expected: dict, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = status_rows(settings)
        if set(rows) == set(expected) and all(
                rows[name]["state"] == "diverged" if want == "diverged"
                else rows[name]["replicaVersion"] == want == rows[name]["sourceVersion"]
                and rows[name]["state"] == "healthy"
                for name, want in expected.items()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"locations not at {expected} within {timeout}s: {rows}")
        time.sleep(0.5)


def options_by_location(dev: DevRun) -> dict[str, dict]:
    output = "\n".join(dev.lines)
    found = {"eastus": json.loads(re.search(r"^storage_options = (\{.*\})$", output, re.M).group(1))}
    for name, opts in re.findall(r'^# replica (\w+): DeltaTable\("[^"]+", storage_options=(\{.*\})\)$', output, re.M):
        found[name] = json.loads(opts)
    return found


def test_readme_runbook_replays_on_the_dev_environment_with_a_failover_and_failback_drill(tmp_path, dev_runs):
    state_dir, settings = tmp_path / "state", tmp_path / "local.settings.json"
    ports = {name: free_port() for name in ("blob", "queue", "table", "functions")}
    dev = DevRun(["bash", "scripts/dev.sh"], state_dir, settings, ports)
    dev_runs.append(dev)
    dev.wait_for(f"^{READY_PREFIX}", timeout=180)
    options = options_by_location(dev)
    assert set(options) == {"eastus", "westeu", "seasia"}  # the example names its locations by region

    relay_pid = int(re.search(r"^dev: relay PID (\d+),", "\n".join(dev.lines), re.M).group(1))

    def write(location: str) -> None:
        write_deltalake(URI, pa.table({"id": [1, 2, 3], "amount": [9.5, 20.0, 3.25]}), mode="append",
                        storage_options=options[location])

    def refused(location: str) -> None:
        before = DeltaTable(URI, storage_options=options[location]).version()
        with pytest.raises(CommitFailedError, match=r'Unsupported table features required: \[Unknown\("delta-'
                                                    r'replication-fenced"\)\]'):
            write(location)
        assert DeltaTable(URI, storage_options=options[location]).version() == before

    for _ in range(3):
        write("eastus")
    wait_for(settings, {"westeu": 2, "seasia": 2})

    transcript: list[tuple[str, int, str]] = []
    try:
        for kind, what in DRILL:
            if kind == "write":
                write(what)
            elif kind == "refused":
                refused(what)
            elif kind == "relay":
                os.kill(relay_pid, signal.SIGSTOP if what == "hold" else signal.SIGCONT)
            elif kind == "wait":
                wait_for(settings, what)
            else:
                code, out = cli(settings, what)
                transcript.append((what, code, out))
    finally:
        os.kill(relay_pid, signal.SIGCONT)  # a held relay would not stop
    codes = {cmd: code for cmd, code, _ in transcript}
    assert "Traceback" not in "".join(out for _, _, out in transcript)
    assert codes["promote --table sales --to eastus"] == 1  # refused at once: diverged
    assert "run rejoin first: python -m cli rejoin --table sales --location eastus" in transcript[4][2]
    assert "fenced eastus at version 4: writers there are refused" in transcript[1][2]
    assert "old primary eastus may hold 1 version(s) beyond 2" in transcript[1][2]  # the held outage commit
    assert "fenced westeu at version 6: writers there are refused" in transcript[10][2]
    assert [code for cmd, code, _ in transcript if cmd.startswith("status")] == [0, 1, 0]
    rows = {tuple(DeltaTable(URI, storage_options=options[loc]).to_pyarrow_table().num_rows for loc in options)}
    assert rows == {(21, 21, 21)}  # 3 + 2 + replayed 1 + 1 commits of 3 rows, equal everywhere

    record = os.environ.get("RUNBOOK_RECORD")
    if record:
        Path(record).write_text("".join(f"$ python -m cli {cmd}\n{out}\n" for cmd, _, out in transcript))
        return
    examples = readme_examples()
    ran = [cmd for cmd, _, _ in transcript]
    positions = [ran.index(cmd, 0) for cmd, _ in examples]  # every README example is a command the drill ran
    runbook = [cmd for cmd, _ in examples if not cmd.startswith(("cost", "endpoint --table sales --region"))]
    assert runbook == [c for c in ran if not c.startswith(("cost", "endpoint --table sales --region"))], \
        "the README's runbook commands are the drill's, in order"
    outputs = {}
    for cmd, _, out in transcript:
        outputs.setdefault(cmd, []).append(out)
    seen: dict[str, int] = {}
    for (cmd, expected), _ in zip(examples, positions):
        i = seen.get(cmd, 0)
        seen[cmd] = i + 1
        assert shape(expected) == shape(outputs[cmd][i]), f"README example `{cmd}` (#{i + 1}) differs:\n" \
                                                          f"README:\n{expected}\nprinted:\n{outputs[cmd][i]}"
    stop = dev.stop()
    assert stop == 0
