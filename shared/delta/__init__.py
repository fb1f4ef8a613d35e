"""Delta log names and actions, the primary's log as one invocation reads it, table state at a version."""
