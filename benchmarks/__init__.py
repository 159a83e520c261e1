"""Benchmarks: each prints its figures as a ratio to a baseline measured in the same run."""
