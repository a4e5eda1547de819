"""Benchmarks behind `quorum bench`: each measures its alternatives side by side in one run."""
