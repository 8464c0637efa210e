"""Benchmarks that compare configurations and baselines in one run on this machine."""
