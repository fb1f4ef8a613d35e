"""Metrics and telemetry setup: below every capability, so any of them may record."""
