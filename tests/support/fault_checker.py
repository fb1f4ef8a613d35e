"""A randomized failover checker (Jepsen / FoundationDB style), driven from a seed.

`program(seed)` (checker_program.py) draws a sequence of operations: writers committing
(deltalake) to the location `resolve_table purpose=write` last told them, compactions and
checkpoints by those writers, event deliveries (late, twice, reordered, dropped), a delivery held
in flight at a failpoint across other steps, planned and forced promotes, partitions of a
location or of the function app's table storage, every timer (lag check with heal and auto_rejoin, retention, snapshots), rejoins,
replays and routed reads. `run_program` executes it step by step, observing every location
after each step; then heals, rejoins, replays and checks (see checker_properties).

Operations are tuples whose choices are fractions resolved against the state at that step, so
any sub-sequence is still a valid program: `shrink` removes operations while the failure stays.
A failure prints the seed and the program; `run_program(..., program=[...])` replays it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from deltalake import CommitProperties, write_deltalake

from devtools.events import blob_created_event
from shared.failover.promote import promote
from shared.failover.rejoin import rejoin
from shared.failover.replay import list_quarantine, replay
from shared.app.lag_check import check_replication
from shared.maintenance.retention import apply_retention
from shared.maintenance.snapshots import maintain_table_snapshots
from shared.reads.resolver import Purpose, resolve_location
from shared.app.commit_event import handle_storage_event
from tests.support.checker_properties import Observer, check_read, commit_version, final_checks
from tests.support.checker_program import program
from tests.support.checker_world import LOCATIONS, Origin, Proxies, World, ids_table

@dataclass
class Report:
    seed: int
    program: list[tuple]
    auto_rejoin: bool
    steps: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def text(self) -> str:
        lines = [f"seed {self.seed} auto_rejoin={self.auto_rejoin} ({self.seconds:.1f}s)",
                 f"program = {self.program!r}", "steps:"]
        lines += [f"  {s}" for s in self.steps]
        lines += ["violations:"] + [f"  {v}" for v in self.violations]
        return "\n".join(lines)


def _pick(items: list, fraction: float):
    return items[min(int(fraction * len(items)), len(items) - 1)]


def _states(result) -> str:
    if isinstance(result, Exception):
        return f"raised {type(result).__name__}: {str(result)[:100]}"
    outcomes = ",".join(f"{o.replica}:{o.state.value}" for o in result.outcomes)
    return f"{result.disposition.value} {outcomes}".strip()


def _redeliver(result) -> bool:
    """Event Grid redelivers when the function raised or a replica failed retryably."""
    return isinstance(result, Exception) or bool(result.retryable_failures)


class Runner:
    def __init__(self, world: World, report: Report) -> None:
        self.w, self.report = world, report
        self.observer = Observer(world)

    def deliver(self, runtime, event):
        try:
            return handle_storage_event(runtime, event)
        except Exception as err:  # noqa: BLE001 - the function raised: Event Grid redelivers
            return err

    def lag_check(self) -> str:
        w = self.w
        lags = check_replication(w.runtime, w.runtime.status_store(), None)
        return " ".join(f"{lag.replica}:{lag.status.value}" for lag in lags)

    def step(self, op: tuple) -> str:
        w, kind = self.w, op[0]
        if kind == "write":
            if w.writers[op[1]] != w.primary:
                self.report.count("stale_writes")
            out = w.write(op[1], op[2])
            if out.endswith(": ok"):
                self.report.count("acked_writes")
                if w.writers[op[1]] != w.primary:
                    self.report.count("acked_stale_writes")
            return out
        if kind == "compact":
            out = w.compact(op[1])
            if out.endswith(": ok") and w.writers[op[1]] != w.primary:
                self.report.count("acked_stale_compactions")
            return out
        if kind == "checkpoint":
            return w.checkpoint(op[1])
        if kind == "resolve":
            res = resolve_location(w.runtime, w.table, purpose=Purpose.WRITE)
            w.writers[op[1]] = res.location
            return f"{op[1]} resolved write endpoint {res.location}"
        if kind in ("deliver", "drop"):
            if not w.pending:
                return "skip: no event pending"
            event = _pick(w.pending, op[1])
            name = event["subject"].rsplit("/", 1)[1]
            source = event["data"]["url"].split("/")[3]
            if kind == "drop":
                w.pending.remove(event)
                return f"dropped {source} {name}"
            if not op[2]:
                w.pending.remove(event)
            result = self.deliver(w.runtime, event)
            if _redeliver(result) and event not in w.pending:
                w.pending.append(event)
            return f"delivered {source} {name}{' (kept: delivered again later)' if op[2] else ''}: {_states(result)}"
        if kind == "hold":
            return self.hold(op)
        if kind == "release":
            if w.held is None:
                return "skip: nothing in flight"
            held = w.release()
            result = held.results[0] if held.results else RuntimeError("no result")
            if _redeliver(result):
                w.pending.append(held.event)
            return f"released {held.source} v{held.version} -> {held.replica}: {_states(result)}"
        if kind == "promote":
            return self.promote(op)
        if kind == "cut":
            w.proxies.cut(op[1])
            return f"partitioned {op[1]} from the function app"
        if kind == "heal":
            w.proxies.heal(op[1])
            return f"healed {op[1]}"
        if kind == "lag_check":
            return "lag check: " + self.lag_check()
        if kind == "retention":
            self.report.count("retention_runs")
            results = apply_retention(w.runtime)
            return "retention: " + " ".join(f"{r.replica}:-{len(r.log_files)}log,-{len(r.data_files)}data"
                                             + (f"(skipped: {r.skipped})" if r.skipped else "") for r in results)
        if kind == "snapshots":
            result = maintain_table_snapshots(w.runtime, w.table)
            return f"snapshot of {result.replica} at {result.version}"
        if kind == "rejoin":
            if op[1] == w.primary:
                return f"skip: {op[1]} is the primary"
            result = rejoin(w.runtime, w.table_name, op[1])
            self.report.count("quarantined_versions", len(result.versions))
            return f"rejoined {op[1]}: quarantined {result.versions}, head {result.head_after}"
        if kind == "replay":
            return self.replay_all()
        if kind == "read":
            return self.read(op)
        raise ValueError(f"unknown operation {op!r}")

    def hold(self, op: tuple) -> str:
        w = self.w
        if w.held is not None:
            return "skip: one delivery in flight already"
        heads = self.observer.heads()
        candidates = []
        for event in w.pending:
            source = event["data"]["url"].split("/")[3]
            v = commit_version(event["subject"].split("/blobs/", 1)[1])
            if source == w.primary and v is not None and v > 0:
                candidates += [(event, r, v) for r in LOCATIONS
                               if r != source and heads[r] == v - 1 and not w.proxies.is_cut(r)]
        if not candidates:
            return "skip: no commit event of the primary one version ahead of a replica"
        event, replica, version = _pick(candidates, op[1])
        w.pending.remove(event)
        source = w.primary
        held = w.hold(event, replica, version, source, self.deliver)
        if held is None:
            return f"delivered {source} v{version} (not held: no copy to stop at)"
        w.held = held
        self.report.count("held")
        self.held_epoch = w.epoch
        return f"in flight: {source} v{version} -> {replica}, stopped after copying a file, before the commit"

    def promote(self, op: tuple) -> str:
        w, forced, target = self.w, op[1], op[2]
        if target == "held":
            if w.held is None:
                return "skip: nothing in flight"
            target = w.held.replica
        if target == w.primary:
            return f"skip: {target} is the primary"
        before = w.epoch
        try:
            result = promote(w.runtime, w.table_name, target, force=forced, timeout=1.0)
            out = (f"promoted {target} ({'forced' if forced else 'planned'}): epoch {result.topology.epoch} at "
                   f"{result.topology.promoted_at_version}, old primary beyond: "
                   f"{result.as_json()['oldPrimaryVersionsBeyondPromotion']}")
        finally:
            w.sync_history()
            if w.epoch != before:
                self.report.count("forced_promotes" if forced else "planned_promotes")
                if w.held is not None:
                    self.report.count("promotes_across_in_flight")
        return out

    def replay_all(self) -> str:
        w = self.w
        epochs = sorted({c.epoch for c in list_quarantine(w.runtime, w.table_name)})
        if not epochs:
            return "skip: nothing quarantined"
        done = []
        for epoch in epochs:
            primary = w.primary
            before = w.log_names(primary)
            result = replay(w.runtime, w.table_name, epoch)
            self.report.count("replayed_versions", len(result.applied))
            done.append(f"epoch {epoch}: applied {result.applied}, already {result.already_applied}, "
                        f"needs a person {[c.version for c in result.needs_review]}")
            for name, etag in w.log_names(primary).items():
                if before.get(name) != etag:
                    w.pending.append(blob_created_event(primary, w.container, name, etag=etag,
                                                        azurite_port=w.azurite.port))
        return "replayed " + "; ".join(done)

    def read(self, op: tuple) -> str:
        w, region, fraction = self.w, op[1], op[2]
        head = w.head(w.primary)
        asked = None if fraction is None or head is None else int(fraction * (head + 1))
        self.report.count("reads")
        try:
            res = resolve_location(w.runtime, w.table, region=region, version=asked)
        except Exception as err:  # noqa: BLE001 - no answer is not a wrong answer
            self.report.count("reads_unanswered")
            return f"read region={region} version={asked}: no location ({type(err).__name__})"
        problems = check_read(w, res, asked)
        self.observer.violations += problems
        return f"read region={region} version={asked}: {res.location} v{res.version}" + (" WRONG" if problems else "")

    def run(self) -> None:
        for i, op in enumerate(self.report.program):
            t0 = time.monotonic()
            try:
                line = self.step(op)
            except Exception as err:  # noqa: BLE001 - an operation failing is allowed; what it leaves is checked
                line = f"{op[0]} failed: {type(err).__name__}: {str(err)[:160]}"
            t1 = time.monotonic()
            self.observer.observe(f"step {i} {op!r}")
            self.report.steps.append(f"{i:2d} {op!r}: {line} [{t1 - t0:.2f}s +{time.monotonic() - t1:.2f}s]")
        self.settle()
        self.report.violations = self.observer.violations + final_checks(self.w, self.observer)

    def settle(self) -> None:
        """The operators' recovery: heal, deliver what is pending, rejoin, replay, heal again."""
        w, steps = self.w, self.report.steps
        w.proxies.heal_all()
        if w.held is not None:
            steps.append("end: " + self.step(("release",)))
            self.observer.observe("recovery: release")
        self.drain()
        self.observer.observe("recovery: pending events delivered")
        for round_ in range(2):
            primary = self.observer.commits(w.primary)
            apart = [a for a in LOCATIONS if a != w.primary and self.observer.commits(a) != primary]
            ops = [("rejoin", a) for a in apart if w.epoch > 0] + [("replay",), ("lag_check",)]
            for op in ops:
                try:
                    line = self.step(op)
                except Exception as err:  # noqa: BLE001 - a refusal here is reported by the final checks
                    line = f"{op[0]} failed: {type(err).__name__}: {str(err)[:300]}"
                steps.append(f"end {round_} {op!r}: {line}")
                self.drain()
                self.observer.observe(f"recovery {round_} {op!r}")
            if all(self.observer.commits(a) == self.observer.commits(w.primary) for a in LOCATIONS):
                break

    def drain(self) -> None:
        """Event Grid delivers whatever is pending (once each, in the order they wait)."""
        while self.w.pending:
            self.deliver(self.w.runtime, self.w.pending.pop(0))


def run_program(azurite, proxies: Proxies, seed: int, prog: list[tuple] | None = None, *,
                auto_rejoin: bool | None = None) -> Report:
    """Run one seed (or an explicit program) in a fresh table; the report holds every step."""
    started = time.monotonic()
    prog = program(seed) if prog is None else prog
    auto = random.Random(seed ^ 0x5EED).random() < 0.5 if auto_rejoin is None else auto_rejoin
    report = Report(seed, prog, auto)
    world = World(azurite, proxies, seed, auto_rejoin=auto)
    runner = None
    try:
        tag = "setup"
        world.origins[tag] = Origin("eastus", 0, tag)
        write_deltalake(world.uri(), ids_table([-1]), storage_options=world.options("eastus"),
                        commit_properties=CommitProperties(custom_metadata={"checker": tag}))
        runner = Runner(world, report)
        runner.deliver(world.runtime, blob_created_event(  # every location holds version 0 before the first step
            "eastus", world.container, "delta/sales/_delta_log/00000000000000000000.json",
            azurite_port=azurite.port))
        runner.observer.observe("setup")
        runner.run()
        report.count("ops", len(prog))
    finally:
        if runner is not None:
            runner.observer.close()
        world.close()
        report.seconds = time.monotonic() - started
    return report


def shrink(azurite, proxies: Proxies, report: Report, *, budget_seconds: float = 300) -> Report:
    """Remove operations (halves, then one at a time) while some violation of the same property remains."""
    kinds = {v[:3] for v in report.violations}
    best, deadline = report, time.monotonic() + budget_seconds

    def still_fails(prog):
        r = run_program(azurite, proxies, report.seed, prog, auto_rejoin=report.auto_rejoin)
        return r if {v[:3] for v in r.violations} & kinds else None

    chunk = max(1, len(best.program) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i = 0
        while i < len(best.program) and time.monotonic() < deadline:
            candidate = best.program[:i] + best.program[i + chunk:]
            smaller = still_fails(candidate) if candidate else None
            if smaller is not None:
                best = smaller
            else:
                i += chunk
        chunk //= 2
    return best
