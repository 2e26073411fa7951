"""Benchmarks for Tessera's compute engine (run ``python -m benchmarks.run``)."""
