"""Regional tables merged into one global table, exactly once, with Delta txn bookkeeping."""
