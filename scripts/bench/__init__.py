"""Helpers of scripts/bench.py (`make bench`): data, processes, load generation, report."""
