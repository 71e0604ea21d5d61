"""Tests that run unchanged under CPython (pytest) and MicroPython (tests/portable/runner.py)."""
