"""`bash scripts/dev.sh` end to end, as a developer uses it, and `status --watch` in a terminal.

The dev environment runs as a subprocess with its own state directory, settings file and free
ports, so a developer's real `.dev/` and `local.settings.json` are never touched. Tests
synchronise on its output (the `ready:` line, the relay's `delivered` lines) and on polled
conditions with deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devtools.azurite import free_port
from devtools.dev import READY_PREFIX, SNIPPET_BEGIN, SNIPPET_END
from devtools.dev_settings import write_settings
from tests.support.lake import batch

REPO = Path(__file__).resolve().parents[2]


def clean_env() -> dict:
    """The test process's environment without any storage or replication settings of its own."""
    return {k: v for k, v in os.environ.items()
            if not k.endswith("_STORAGE") and not k.startswith("REPLICATION_CONFIG") and k != "AzureWebJobsStorage"}


def ignore_sigint() -> None:
    """Start children as a shell without job control would (`nohup ... &`, some CI runners): with
    SIGINT ignored. Ctrl-C and `kill -INT` must still stop them, so they must take SIGINT back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class DevRun:
    """One `dev` process; its output lines are collected by a thread and awaited with deadlines."""

    def __init__(self, command: list[str], state_dir: Path, settings_file: Path, ports: dict) -> None:
        args = ["--state-dir", str(state_dir), "--settings-file", str(settings_file),
                "--blob-port", str(ports["blob"]), "--queue-port", str(ports["queue"]),
                "--table-port", str(ports["table"]), "--functions-url", f"http://127.0.0.1:{ports['functions']}"]
        self.proc = subprocess.Popen(command + args, cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                                     preexec_fn=ignore_sigint)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        """The first line (from now on) matching `pattern`; fails with the output so far."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} within {timeout}s:\n" + "\n".join(self.lines))
            if line is None:
                pytest.fail(f"dev exited ({self.proc.wait()}) before {pattern!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def snippet(self) -> str:
        start = next(i for i, line in enumerate(self.lines) if line.startswith(SNIPPET_BEGIN))
        end = self.lines.index(SNIPPET_END, start)
        return "\n".join(self.lines[start:end + 1])

    def descendants(self) -> set[int]:
        """Every live process below this one (read from /proc while it runs)."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        found, todo = set(), [self.proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.add(child)
                todo.append(child)
        return found

    def stop(self) -> int:
        """Ctrl-C by PID, as a terminal would; returns its exit code after its output ends."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=60)
        self.wait_for(r"^dev: stopped the relay and Azurite")
        return code


@pytest.fixture
def dev_runs():
    """Dev processes a test starts; any still running at the end (a failed test) is stopped by PID."""
    runs: list[DevRun] = []
    yield runs
    for run in runs:
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGINT)  # it stops its own children
            try:
                run.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                run.proc.kill()
                run.proc.wait()


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def status(settings_file: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "cli", "--settings", str(settings_file), "status", "--json"],
                            cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1), result.stderr
    return {r["replica"]: r for r in json.loads(result.stdout)["replicas"]}


def wait_replicated(settings_file: Path, version: int, timeout: float = 60) -> dict:
    """Poll `status --json` until the primary and every replica are at `version`."""
    deadline = time.monotonic() + timeout
    while True:
        rows = status(settings_file)
        if set(rows) == {"westeu", "seasia"} and all(
                r["sourceVersion"] == version and r["replicaVersion"] == version and r["state"] == "healthy"
                for r in rows.values()):
            return rows
        if time.monotonic() > deadline:
            pytest.fail(f"replicas not at version {version} within {timeout}s: {rows}")


def run_snippet(code: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def assert_all_gone(pids: set[int]) -> None:
    """Every PID has exited; survivors are killed (by PID) so a failing run leaves nothing behind."""
    survivors = [pid for pid in pids if alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


def stop_and_check_children(dev: DevRun) -> None:
    children = dev.descendants()
    assert len(children) >= 2  # Azurite and the relay
    assert dev.stop() == 0
    assert_all_gone(children)


def test_dev_sh_replicates_printed_snippet_commits_and_restarts_where_it_was(tmp_path, dev_runs):
    state_dir, settings_file = tmp_path / "state", tmp_path / "local.settings.json"
    ports = {name: free_port() for name in ("blob", "queue", "table", "functions")}

    dev = DevRun(["bash", "scripts/dev.sh"], state_dir, settings_file, ports)
    dev_runs.append(dev)
    ready = dev.wait_for(f"^{READY_PREFIX}")
    azurite_pid, relay_pid = (int(p) for p in re.search(r"Azurite PID (\d+), relay PID (\d+)", ready).groups())
    output = "\n".join(dev.lines)
    assert f"GET http://127.0.0.1:{ports['functions']}/api/status" in output
    assert f"GET http://127.0.0.1:{ports['functions']}/api/tables/sales/endpoint" in output
    assert f"kill -INT {dev.proc.pid}" in output  # bash exec'd python: the printed PID is the one to stop
    values = json.loads(settings_file.read_text())["Values"]
    assert f"BlobEndpoint=http://127.0.0.1:{ports['blob']}/eastus;" in values["EASTUS_STORAGE"]
    assert "<base64 key" not in values["WESTEU_STORAGE"] + values["SEASIA_STORAGE"]

    code = dev.snippet()
    assert [run_snippet(code, tmp_path) for _ in range(3)] == [f"sales is at version {v}" for v in range(3)]
    wait_replicated(settings_file, 2)

    children = dev.descendants()
    assert {azurite_pid, relay_pid} <= children
    assert dev.stop() == 0
    assert_all_gone(children)
    assert not settings_file.read_text().count("<base64 key")

    # Restart: same keys and data, the relay resumes from its position (no version redelivered).
    again = DevRun([sys.executable, "-m", "cli", "dev"], state_dir, settings_file, ports)
    dev_runs.append(again)
    again.wait_for(f"^{READY_PREFIX}")
    assert again.snippet() == code  # same keys, same ports
    assert any(line.startswith(f"dev: kept {settings_file}") for line in again.lines)
    rows = status(settings_file)
    assert {r["sourceVersion"] for r in rows.values()} == {2} and {r["replicaVersion"] for r in rows.values()} == {2}

    # A second concurrent start refuses, names the running one, and touches nothing.
    before = settings_file.read_text()
    second = subprocess.run([sys.executable, "-m", "cli", "dev", "--state-dir", str(state_dir), "--settings-file",
                             str(settings_file)], cwd=REPO, env=clean_env(), capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 1
    assert f"a dev environment is already running from {state_dir} (PID {again.proc.pid})" in second.stderr
    assert second.stdout == "" and settings_file.read_text() == before

    assert run_snippet(code, tmp_path) == "sales is at version 3"
    again.wait_for(r"^delivered delta/sales/_delta_log/00000000000000000003\.json$")
    delivered = [line for line in again.lines if line.startswith("delivered ")]
    assert not [line for line in delivered if re.search(r"_delta_log/0+[012]\.json$", line)], delivered
    wait_replicated(settings_file, 3)
    stop_and_check_children(again)


def test_settings_file_edited_by_the_user_is_never_overwritten_without_asking(tmp_path):
    state_dir, settings_file = tmp_path / "state", tmp_path / "local.settings.json"
    state_dir.mkdir()
    state: dict = {}
    first = {"EASTUS_STORAGE": "DefaultEndpointsProtocol=http;AccountName=eastus;AccountKey=a2V5;"}
    assert write_settings(settings_file, state_dir, first, state).path == settings_file
    doc = json.loads(settings_file.read_text())
    assert doc["Values"]["EASTUS_STORAGE"] == first["EASTUS_STORAGE"]
    assert doc["Values"]["FUNCTIONS_WORKER_RUNTIME"] == "python"  # the rest comes from the example

    doc["Values"]["LAG_CHECK_SCHEDULE"] = "0 * * * * *"  # the user's edit
    settings_file.write_text(json.dumps(doc))
    edited = settings_file.read_text()
    kept = write_settings(settings_file, state_dir, first, state)
    assert kept.path == settings_file and settings_file.read_text() == edited

    moved = {"EASTUS_STORAGE": first["EASTUS_STORAGE"].replace("a2V5", "bmV3")}
    refused = write_settings(settings_file, state_dir, moved, state, ask=lambda question: False)
    assert settings_file.read_text() == edited
    assert refused.path == state_dir / "local.settings.json"
    assert "EASTUS_STORAGE differ" in refused.message
    assert json.loads(refused.path.read_text())["Values"]["EASTUS_STORAGE"] == moved["EASTUS_STORAGE"]

    questions = []
    merged = write_settings(settings_file, state_dir, moved, state, ask=lambda q: questions.append(q) or True)
    assert merged.path == settings_file and "EASTUS_STORAGE" in questions[0]
    values = json.loads(settings_file.read_text())["Values"]
    assert values["EASTUS_STORAGE"] == moved["EASTUS_STORAGE"] and values["LAG_CHECK_SCHEDULE"] == "0 * * * * *"


def read_until(fd: int, buffer: list[str], done, timeout: float = 60) -> str:
    """Read the pseudo-terminal into `buffer` until `done(text)`; returns the text."""
    deadline = time.monotonic() + timeout
    while not done("".join(buffer)):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail("terminal never showed the expected frame:\n" + "".join(buffer))
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                buffer.append(os.read(fd, 65536).decode(errors="replace"))
            except OSError:  # the child closed the terminal
                pytest.fail("status --watch exited early:\n" + "".join(buffer))
    return "".join(buffer)


def frames(text: str) -> list[str]:
    """The frames drawn so far (each starts at cursor home); the terminal turns \\n into \\r\\n."""
    return [f.replace("\x1b[K", "").replace("\x1b[J", "").replace("\r", "") for f in text.split("\x1b[H")[1:]]


def test_status_watch_redraws_in_place_in_a_terminal(lake):
    lake.write(batch(0, 5), mode="overwrite", partition_by=["region"])
    env = clean_env()
    env.update(lake.environ)
    env["REPLICATION_CONFIG"] = json.dumps(lake.config_doc)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cli", "status", "--watch", "--interval", "0.2"], cwd=REPO,
                            env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=ignore_sigint)
    os.close(slave)
    buffer: list[str] = []
    try:
        def row(frame: str, replica: str, state: str) -> bool:
            return re.search(rf"^sales\s+{replica}\s+0\s+-?\S+\s+\d+\s+\S+s\s+{state}$", frame, re.M) is not None

        read_until(master, buffer, lambda t: any(row(f, "westeu", "lagging") for f in frames(t)))
        lake.deliver_all(lake.events())
        seen = len(frames("".join(buffer)))
        text = read_until(master, buffer, lambda t: any(
            row(f, "westeu", "healthy") and row(f, "seasia", "healthy") for f in frames(t)[seen:]))
        assert text.startswith("\x1b[2J")  # cleared once, then redrawn from the top-left corner
        assert len(frames(text)) >= 2
        assert all(f.startswith("python -m cli status --watch  every 0.2s") for f in frames(text))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
