"""Benchmarks of fastflow: timing scripts run as ``python -m benchmarks NAME`` (``benchmarks/__main__.py``
lists them), and the device check for a CUDA machine in :mod:`benchmarks.device`."""
