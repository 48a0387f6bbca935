"""Benchmarks: similarity-metric evaluation, retrieval quality and speed."""
