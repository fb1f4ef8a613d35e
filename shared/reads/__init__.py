"""Reading a table from the nearest healthy location: routing, probing, resolving, open_table."""
