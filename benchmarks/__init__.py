"""Benchmarks of eimn-kernels: complexity (params, Multi-Adds), per-op and whole-model timings.

Entry points (run from the repository root):
``python -m benchmarks.complexity``, ``python -m benchmarks.ops``, ``python -m benchmarks.model``,
``python -m benchmarks.run [--quick]`` (everything). Every timed row goes to the results log
``benchmarks/results/history.jsonl`` and the machine's ``latest-<machine>.md/.png`` are regenerated from it
(:mod:`benchmarks.history`). All timings go through :mod:`benchmarks.harness`. How to measure: docs/benchmarking.md.
"""

import os as _os
import sys as _sys

# On a shared, oversubscribed CPU, OpenMP threads that spin at barriers while their partner thread is
# descheduled make 2-thread runs ~10x slower than 1-thread runs (measured here: EIMN_L on a 16x12 input,
# 0.35 s with 1 thread, 5-9 s with 2 threads, 0.6 s with 2 threads and a passive wait policy). libgomp reads
# the policy when torch loads it, so it is set here, before torch is imported, unless the user chose one.
# Recorded in every result's machine info (harness.machine_info). EIMN_BENCH_OMP_DEFAULT=1 leaves it unset
# (libgomp's default: spin, then sleep), as benchmarks.ops --omp-wait default does for its per-shape processes: on
# an idle machine eager PyTorch (many short parallel regions) is 15-30% faster that way.
if "torch" not in _sys.modules and not _os.environ.get("EIMN_BENCH_OMP_DEFAULT"):
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
