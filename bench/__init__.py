"""Benchmarks: rerunnable scripts whose results go into docs/benchmarks.md."""
