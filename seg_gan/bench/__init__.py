"""Benchmarks: `python -m seg_gan.bench <name>`; each prints a small table for the README."""
