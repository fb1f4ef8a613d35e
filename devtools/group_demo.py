"""Group demo: a whole database replicated with no per-table configuration, failed over at one moment.

On a private Azurite (eastus and westeu accounts, the function app's tables): one group `lake` holds
every Delta table under `warehouse/`. It creates 45 tables, starts the app (the functions' own
handlers, called with real azure.functions objects), then creates 5 more (their events start them),
one more whose events are all lost (the lag check's sweep finds it) and drops one (reported
`dropped`). A commit whose event is lost puts the group's recovery point behind: reported and
alerted (an alert sink on loopback), then healed and recovered. A consistent group read returns
each table's version at the recovery point. A forced `--consistent` group promote to westeu and a
group rejoin of eastus lose nothing (the quarantines are replayed), and a drill writes its report.

Run: bash scripts/group_demo.sh   (exit 0 when every step held; the report lands in the work folder)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import azure.functions as func
import pyarrow as pa
from azure.storage.blob import BlobServiceClient
from deltalake import DeltaTable, write_deltalake

from devtools.alert_sink import AlertSink
from devtools.azurite import AzuriteProcess
from devtools.events import log_blob_events

CONTAINER = "lake"
PREFIX = "warehouse"


def _batch(start: int, n: int) -> pa.Table:
    return pa.table({"id": pa.array(range(start, start + n), pa.int64()), "amount": [i * 1.5 for i in range(start, start + n)]})


def _rows(table) -> list:
    return sorted(tuple(r.values()) for r in table.to_pylist())


class Demo:
    def __init__(self, az: AzuriteProcess, sink: AlertSink, workdir: Path) -> None:
        self.az, self.sink, self.workdir = az, sink, workdir
        self.settings = {"AzureWebJobsStorage": az.connection_string("devstoreaccount1"),
                         "EASTUS_STORAGE": az.connection_string("eastus"),
                         "WESTEU_STORAGE": az.connection_string("westeu"),
                         "ALERT_TOPIC_ENDPOINT": sink.endpoint, "ALERT_TOPIC_KEY": "demo-topic-key"}
        self.config = {"groups": [{
            "name": "lake", "source": {"name": "eastus", "connection": "EASTUS_STORAGE", "container": CONTAINER,
                                       "prefix": PREFIX, "region": "eastus"},
            "replicas": [{"name": "westeu", "connection": "WESTEU_STORAGE", "container": CONTAINER, "prefix": PREFIX,
                          "region": "westeu"}],
            "rpo_threshold_seconds": 0}]}
        self.clients = {a: BlobServiceClient.from_connection_string(self.settings[f"{a.upper()}_STORAGE"])
                        for a in ("eastus", "westeu")}
        self.clients["eastus"].create_container(CONTAINER)
        self.failures: list[str] = []

    # -- helpers ---------------------------------------------------------------------------
    def uri(self, relative: str) -> str:
        return f"az://{CONTAINER}/{PREFIX}/{relative}"

    def write(self, relative: str, data: pa.Table, account: str = "eastus") -> None:
        write_deltalake(self.uri(relative), data, mode="append", storage_options=self.az.storage_options(account))

    def read(self, relative: str, account: str, version: int | None = None) -> list:
        return _rows(DeltaTable(self.uri(relative), version=version,
                                storage_options=self.az.storage_options(account)).to_pyarrow_table())

    def deliver(self, relative: str, account: str = "eastus") -> int:
        """Every log blob of one table as Event Grid events to replicate_commit (as the host calls it)."""
        from functions.replicate_commit import replicate_commit

        events = log_blob_events(self.clients[account].get_container_client(CONTAINER), account,
                                 f"{PREFIX}/{relative}", azurite_port=self.az.port)
        for e in events:
            replicate_commit(func.EventGridEvent(id=e["id"], data=e["data"], topic=e["topic"], subject=e["subject"],
                                                 event_type=e["eventType"], event_time=datetime.now(timezone.utc),
                                                 data_version=""))
        return len(events)

    def lag_check(self, *, heal: bool = True) -> list:
        from shared.app.lag_check import check_replication
        from shared.runtime import get_runtime

        runtime = get_runtime()
        return check_replication(runtime, runtime.status_store(), runtime.alert_publisher(), heal=heal)

    def expect(self, what: str, ok: bool, detail: str = "") -> None:
        print(f"  {'ok ' if ok else 'FAILED'} {what}" + (f" ({detail})" if detail else ""), flush=True)
        if not ok:
            self.failures.append(what)

    def cli(self, *args: str) -> tuple[int, dict]:
        """A CLI command in this process's settings (the CLI's own entry point), its JSON output."""
        import contextlib
        import io

        from cli.__main__ import main as cli_main

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                code = cli_main(list(args))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 2
        text = out.getvalue()
        return code, (json.loads(text) if text.strip().startswith(("{", "[")) else {"text": text})

    # -- the story ---------------------------------------------------------------------------
    def run(self) -> int:
        from shared.runtime import get_runtime

        group = "lake"
        tables = [f"db{i % 5}/t{i:02d}" for i in range(50)]
        print("1. 45 tables under warehouse/, then the app starts; its events replicate each table found")
        for relative in tables[:45]:
            write_deltalake(self.uri(relative), _batch(0, 3), storage_options=self.az.storage_options("eastus"))
        delivered = sum(self.deliver(r) for r in tables[:45])
        known = {t.name for t in get_runtime().tables()}
        self.expect("45 tables known from their events, no per-table configuration", len(known) == 45,
                    f"{delivered} events")
        print("2. 5 tables created after the start: their first event starts each")
        for relative in tables[45:]:
            write_deltalake(self.uri(relative), _batch(0, 3), storage_options=self.az.storage_options("eastus"))
            self.deliver(relative)
        self.expect("50 tables replicated", all(self.read(r, "westeu") == self.read(r, "eastus") for r in tables))
        print("3. a table whose events are all lost, and a dropped one: the lag check's sweep")
        write_deltalake(self.uri("db0/lost"), _batch(0, 4), storage_options=self.az.storage_options("eastus"))
        cc = self.clients["eastus"].get_container_client(CONTAINER)
        cc.delete_blobs(*[b.name for b in cc.list_blobs(name_starts_with=f"{PREFIX}/db1/t01/")])
        measured = {(m.table, m.status.value) for m in self.lag_check()}
        self.expect("the table with lost events is found and replicated",
                    ("lake:db0.lost", "healthy") in measured and self.read("db0/lost", "westeu") == _rows(_batch(0, 4)))
        self.expect("the dropped table is reported dropped, its replica kept",
                    ("lake:db1.t01", "dropped") in measured and self.read("db1/t01", "westeu") == _rows(_batch(0, 3)))
        print("4. a commit whose event is lost: the group's recovery point falls behind, alerted, then healed")
        self.write("db2/t02", _batch(3, 3))
        self.lag_check(heal=False)
        code, status = self.cli("status", "--group", group, "--json")
        point = status.get("groups", [{}])[0]
        self.expect("status --group reports the point and one table behind",
                    point.get("tablesBehind") == 1 and point.get("tables") == 50, json.dumps(point))
        self.expect("DeltaReplication.GroupRpoExceeded alerted",
                    "DeltaReplication.GroupRpoExceeded" in [e["eventType"] for e in self.sink.events])
        self.lag_check()
        self.expect("healed: DeltaReplication.Recovered", self.sink.types()[-1] == "DeltaReplication.Recovered")
        print("5. a consistent group read: every table at one location's recovery point")
        self.write("db3/t03", _batch(3, 3))  # lost event: westeu's point is just before it
        self.write("db4/t04", _batch(3, 3))
        self.deliver("db4/t04")  # db4/t04's v1 reached westeu, but it came after db3/t03's lost v1
        code, found = self.cli("endpoint", "--group", group, "--consistent", "--region", "westeu", "--json")
        versions = {t["table"]: t["version"] for t in found.get("tables", [])}
        self.expect("westeu for a reader there, each table as of its point", code == 0
                    and found.get("location") == "westeu" and versions.get("lake:db3.t03") == 0
                    and versions.get("lake:db4.t04") == 0,
                    f"{found.get('location')} at {found.get('recoveryPoint')}")
        print("6. eastus is lost: a forced --consistent group promote to westeu, then eastus rejoins")
        written = {r: self.read(r, "eastus") for r in ("db3/t03", "db4/t04")}
        code, promoted = self.cli("promote", "--group", group, "--to", "westeu", "--force", "--consistent", "--json")
        trimmed = {t["table"]: t["quarantinedVersions"] for t in promoted.get("tables", [])}
        members = len(get_runtime().tables())
        self.expect(f"all {members} tables flipped at one moment; db4/t04's later commit quarantined on westeu",
                    code == 0 and trimmed.get("lake:db4.t04") == [1] and len(trimmed) == members, f"group epoch "
                    f"{promoted.get('groupEpoch')}, recovery point {promoted.get('recoveryPoint')}")
        code, rejoined = self.cli("rejoin", "--group", group, "--location", "eastus", "--json")
        self.expect("eastus rejoined in every table", code == 0 and not rejoined.get("failed")
                    and len(rejoined.get("tables", [])) == members, json.dumps(rejoined.get("failed"))[:500])
        for name in ("lake:db3.t03", "lake:db4.t04"):
            self.cli("quarantine", "replay", "--table", name, "--epoch", "1", "--json")
        self.expect("nothing lost: the quarantines replayed, every row written is on the new primary",
                    {r: self.read(r, "westeu") for r in written} == written)
        print("7. a drill of failing back to eastus: reads only, an evidence report")
        report = self.workdir / "drill-lake-to-eastus.md"
        code, drill = self.cli("drill", "--group", group, "--to", "eastus", "--json", "--report", str(report))
        self.expect("drill report written, target usable", code == 0 and report.exists() and drill.get("usable"),
                    str(report))
        print(f"\n{'OK' if not self.failures else 'FAILED: ' + '; '.join(self.failures)}")
        return 0 if not self.failures else 1


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s %(message)s")
    workdir = Path(os.environ.get("GROUP_DEMO_DIR") or tempfile.mkdtemp(prefix="group-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with AzuriteProcess(("eastus", "westeu"), with_table=True) as az, AlertSink() as sink:
        demo = Demo(az, sink, workdir)
        os.environ.update(demo.settings)
        os.environ["REPLICATION_CONFIG"] = json.dumps(demo.config)
        from shared.runtime import reset_runtime

        reset_runtime()
        try:
            return demo.run()
        finally:
            reset_runtime()


if __name__ == "__main__":
    sys.exit(main())
