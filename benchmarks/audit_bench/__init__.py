"""The audit benchmark (``python benchmarks/run.py``), split by role: workloads, methods, measurement, report."""
