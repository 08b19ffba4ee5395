"""The benchmark suite: the three BENCHMARKS.md models with their real data."""
