"""Snapshots, retention and purges."""
