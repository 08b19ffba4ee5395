"""Benchmark harness: variants, timing, metrics, reports."""
