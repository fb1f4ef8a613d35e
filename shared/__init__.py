"""The Delta Lake replication library. Plain Python: never imports azure.functions."""
