"""The jobs the faces run (functions, CLI, Python readers): each over the runtime, above every capability."""
