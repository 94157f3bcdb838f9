"""Benchmarks of eimn-kernels: complexity (params, Multi-Adds), per-op and whole-model timings.

Entry points (run from the repository root):
``python -m benchmarks.complexity``, ``python -m benchmarks.ops``, ``python -m benchmarks.model``,
``python -m benchmarks.run [--quick]`` (everything; writes benchmarks/results/<machine>-<date>.{json,md,png}).
All timings go through :mod:`benchmarks.harness`.
"""
