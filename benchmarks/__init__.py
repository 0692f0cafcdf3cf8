"""Speed and quality benchmarks: ``make bench`` (``python -m benchmarks``).

Every benchmark prints its figures and the ratio against a baseline measured in the same
run, never against a number remembered from another machine or another day.
"""
