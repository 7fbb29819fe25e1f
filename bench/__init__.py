"""Benchmarks: one run (`python bench/run.py`) measures the crypto floor and everything above it
on this machine and prints ratios against it. Nothing here is asserted by the test suite."""
