"""Lag measurement, the lag check, status rows, alerts, metrics."""
