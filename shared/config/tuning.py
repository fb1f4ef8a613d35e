"""Tuning: the batch sizes, pool sizes and the invocation deadline, in one object passed down.

Defaults are what the benchmarks were measured with (bench/RESULTS.md); an operator overrides
any of them with the `REPLICATION_TUNING` app setting, a JSON object of these names (read in
settings.py, the one reader of the environment). Tests build a runtime with the tuning they
need instead of patching module globals.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from shared.errors import ConfigError

TUNING_SETTING = "REPLICATION_TUNING"


@dataclass(frozen=True)
class Tuning:
    # Copies in flight per host (every replica and invocation share them) and replica tasks.
    file_copy_workers: int = 32
    task_workers: int = 32
    # A catch-up batch: this many versions, ending early once its commits hold batch_commit_bytes,
    # so memory per catching-up replica is at most two batches whatever the lag.
    batch_versions: int = 64
    batch_commit_bytes: int = 4 * 1024 * 1024
    # Versions of history backfilled per catch-up invocation (0: none; the next one resumes).
    backfill_step_versions: int = 5000
    # Every invocation's work stops here (every storage request checks it, shared/deadline.py):
    # a minute inside host.json's functionTimeout (10 min), so its outcome is still recorded.
    invocation_seconds: float = 540.0


_MINIMUM = {"file_copy_workers": 1, "task_workers": 1, "batch_versions": 1, "batch_commit_bytes": 1,
            "backfill_step_versions": 0, "invocation_seconds": 1}


def parse_tuning(text: str | None) -> Tuning:
    """The tuning from `REPLICATION_TUNING` (None or empty: the defaults).

    Raises:
        ConfigError: not a JSON object, an unknown name, or a value of the wrong type or too small;
            the message names the setting and the field.
    """
    if not text:
        return Tuning()
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"{TUNING_SETTING} is not valid JSON ({err.msg}); give an object such as "
                          '{"file_copy_workers": 16}, or remove the setting for the defaults') from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{TUNING_SETTING} must be a JSON object of tuning names, got {type(doc).__name__}")
    fields = {f.name: f for f in dataclasses.fields(Tuning)}
    values = {}
    for name, value in doc.items():
        if name not in fields:
            raise ConfigError(f"{TUNING_SETTING}.{name}: unknown tuning name; expected one of {', '.join(fields)}")
        integral = fields[name].type == "int"
        if isinstance(value, bool) or not isinstance(value, int if integral else (int, float)):
            raise ConfigError(f"{TUNING_SETTING}.{name}: expected {'a whole number' if integral else 'a number'}, "
                              f"got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{TUNING_SETTING}.{name}: must be a finite number, got {value!r}")
        if value < _MINIMUM[name]:
            raise ConfigError(f"{TUNING_SETTING}.{name}: must be at least {_MINIMUM[name]}, got {value!r}")
        values[name] = value
    return Tuning(**values)
