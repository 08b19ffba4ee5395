"""Operator fusions, written with the public pattern-rewrite API."""
