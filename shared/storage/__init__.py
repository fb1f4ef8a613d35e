"""The TableStore protocol and its blob implementation, storage clients."""
