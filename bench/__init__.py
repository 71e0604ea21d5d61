"""Benchmarks: speed and size goals live here, not in timed tests (run each script directly)."""
