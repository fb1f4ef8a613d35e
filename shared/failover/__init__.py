"""Failover: the topology (primary and epoch), promote, rejoin with quarantine, replay."""
