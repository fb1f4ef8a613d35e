"""Developer tooling: local Azurite processes for tests, the demo and benchmarks."""
