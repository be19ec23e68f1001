"""Benchmarks and GPU checks; each prints its figures and writes JSON (docs/benchmarks/)."""
