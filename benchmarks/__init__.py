"""Benchmarks of the prototype-MIL op (``pytest --benchmark``) and their report (``python -m benchmarks.report``)."""
