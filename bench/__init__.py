"""Benchmarks of the gateway (run from the repository root: ``python -m bench.relay``)."""
