"""Helpers shipped with the package for tests, the demo and benchmarks: worker processes,
sample campaigns, output readers. Nothing here is used by production workers."""
