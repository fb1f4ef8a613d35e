"""Groups: every Delta table under a prefix, found by events and sweeps, replicated as one."""
