"""The checker's programs: from a seed, a sequence of operations drawn with a rough model of the
state, plus short scripted stories (FoundationDB's "workloads") for the faults that need several
steps in order. Operations hold fractions resolved against the state at their step (fault_checker),
so any sub-sequence is a valid program."""

from __future__ import annotations

import random

from tests.support.checker_world import HOST, LOCATIONS

WRITERS = ("w1", "w2")


def program(seed: int, ops: int = 16) -> list[tuple]:
    """The operations of one seed, drawn with a rough model of the state so most of them apply."""
    rng = random.Random(seed)
    primary, cut, held, promoted = "eastus", set(), False, False
    writers = dict.fromkeys(WRITERS, "eastus")
    out: list[tuple] = [("write", "w1", 2), ("deliver", 0.0, False)]
    # Stories: short scripted sequences (FoundationDB's "workloads") interleaved with the random
    # operations, so that the faults that need several steps in order happen in most seeds.
    stories = [s for s in ("outage", "in_flight") if rng.random() < 0.45]
    queue: list[tuple] = []
    while len(out) < ops or queue:  # a story under way is finished
        if not queue and stories and rng.random() < 0.3:
            queue = _story(stories.pop(0), rng, primary, cut, writers)
        if queue and rng.random() < 0.7:
            op = queue.pop(0)
            out.append(op)
            primary, held, promoted = _model(op, primary, cut, held, promoted, writers)
            continue
        w = rng.choice(WRITERS)
        stale = writers[w] != primary
        choices = {
            "write": 5, "compact": 3 if stale else 0.8, "checkpoint": 0.4, "resolve": 1.5, "deliver": 4,
            "drop": 0.3, "hold": 0 if held else 1.5, "release": 2.5 if held else 0,
            "forced": 4 if held or primary in cut else 1, "planned": 0.8, "cut": 0.8 if len(cut) < 2 else 0,
            "heal": 1.2 * len(cut), "lag_check": 1, "retention": 2 if promoted else 0.7, "snapshots": 0.4,
            "rejoin": 0.6 if promoted else 0, "replay": 0.4 if promoted else 0, "read": 1.5,
        }
        kind = rng.choices(list(choices), weights=list(choices.values()))[0]
        if kind == "write":
            out.append(("write", w, rng.choice((1, 2, 3))))
        elif kind in ("compact", "checkpoint", "resolve"):
            out.append((kind, w))
            if kind == "resolve" and HOST not in cut:
                writers[w] = primary
        elif kind == "deliver":
            out.append(("deliver", round(rng.random(), 3), rng.random() < 0.25))
        elif kind == "drop":
            out.append(("drop", round(rng.random(), 3)))
        elif kind == "hold":
            out.append(("hold", round(rng.random(), 3), round(rng.random(), 3)))
            held = True
        elif kind == "release":
            out.append(("release",))
            held = False
        elif kind in ("forced", "planned"):
            others = [a for a in LOCATIONS if a != primary]
            target = "held" if held and rng.random() < 0.7 else rng.choice(others)
            out.append(("promote", kind == "forced", target))
            if target != "held" and target not in cut and (kind == "forced" or primary not in cut):
                primary, promoted = target, True
            elif target == "held":
                promoted = True
        elif kind == "cut":
            what = primary if rng.random() < 0.5 else rng.choice([*LOCATIONS, HOST])
            if what not in cut:
                out.append(("cut", what))
                cut.add(what)
        elif kind == "heal":
            what = rng.choice(sorted(cut))
            out.append(("heal", what))
            cut.discard(what)
        elif kind == "rejoin":
            out.append(("rejoin", rng.choice(LOCATIONS)))
        elif kind == "read":
            out.append(("read", rng.choice((*LOCATIONS, None)), None if rng.random() < 0.4 else round(rng.random(), 3)))
        else:
            out.append((kind,))
    return out


def _story(name: str, rng: random.Random, primary: str, cut: set, writers: dict) -> list[tuple]:
    others = [a for a in LOCATIONS if a != primary and a not in cut]
    if not others:
        return []
    w = rng.choice(WRITERS)
    if name == "outage":  # the primary's region is cut off; a writer there keeps committing; it returns
        stale = [x for x in WRITERS if writers[x] == primary] or [w]
        return [("cut", primary), ("promote", True, rng.choice(others)), ("write", stale[0], 2),
                ("write", stale[0], 1), ("compact", stale[0]), ("heal", primary),
                rng.choice([("retention",), ("lag_check",), ("snapshots",)]), ("retention",)]
    # in flight: a commit's event stops after its first file reached a replica; a promote; it goes on
    return [("resolve", w), ("write", w, 2), ("hold", round(rng.random(), 3), round(rng.random(), 3)),
            ("promote", rng.random() < 0.7, "held"), ("write", w, 1), ("release",)]


def _model(op: tuple, primary: str, cut: set, held: bool, promoted: bool, writers: dict):
    """The generator's rough idea of the state after a story's operation."""
    kind = op[0]
    if kind == "cut":
        cut.add(op[1])
    elif kind == "heal":
        cut.discard(op[1])
    elif kind == "resolve" and HOST not in cut:
        writers[op[1]] = primary
    elif kind == "hold":
        held = True
    elif kind == "release":
        held = False
    elif kind == "promote" and op[2] != "held" and op[2] not in cut and (op[1] or primary not in cut):
        primary, promoted = op[2], True
    elif kind == "promote":
        promoted = True
    return primary, held, promoted
