"""The alert sink the tests use is devtools' (the group demo shows alerts with it too)."""

from devtools.alert_sink import AlertSink

__all__ = ["AlertSink"]
