"""Benchmarks (not tests): measured on the local stack, reported as ratios to raw baselines.

Run from the repo root: ``python -m bench`` (all of the data plane), or a module such as
``python -m bench.webhook``. See docs/benchmarks.md for the latest figures.
"""
