"""Benchmarks of fastflow: models side by side (``python -m benchmarks``) and one script per op."""
