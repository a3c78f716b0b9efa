"""Benchmarks, run as modules from the repository root: ``python -m benchmarks.run`` (see tests/README.md)."""
