"""Loads the compiled extension ``eimn_kernels._C`` (CPU and, when built so, CUDA kernels).

The package works without it (reference and Triton backends); a missing or
broken build is reported once, as a warning.
"""
from __future__ import annotations

import warnings

import torch

_C = None
_error: str | None = None

import importlib.util

try:
    if importlib.util.find_spec(f"{__package__}._C") is None:
        raise ImportError("the extension is not built")
    from . import _C  # noqa: F811  (registers torch.ops.eimn_C.*)
except Exception as e:  # not built, or an undefined symbol from a stale build
    _error = f"{type(e).__name__}: {e}"
    warnings.warn(
        "eimn_kernels: the compiled extension eimn_kernels._C is not available "
        f"({_error}); only the 'reference' and 'triton' backends work. "
        "Build it with `pip install -e . --no-build-isolation` or `python setup.py build_ext --inplace`.",
        RuntimeWarning, stacklevel=2)


# [level, why none, levels built, forced] from eimn_C::cpu_isa (csrc/cpu/cpu_dispatch.cpp), fixed when _C loaded.
_isa = list(torch.ops.eimn_C.cpu_isa()) if _C is not None else ["", "", "", "0"]
if _isa[1] and _isa[3] == "1":
    # EIMN_CPU_ISA named a level this CPU or build cannot run: an explicit setting is not silently replaced
    raise RuntimeError(f"eimn_kernels: {_isa[1]}")


def cpu_isa() -> str:
    """The ISA level the CPU kernels run at: ``"avx512"`` or ``"avx2"`` (a multi-level build on x86-64, chosen from the
    CPU's features or forced by the environment variable ``EIMN_CPU_ISA``), ``"native"`` (a single-level build,
    EIMN_NATIVE=1 or another architecture), or ``""`` where none runs (no extension, or a CPU below AVX2+FMA)."""
    return _isa[0]


def cpu_kernels_loaded() -> bool:
    """True when the extension is loaded with a level of CPU kernels that this CPU runs (torch.ops.eimn_C's CPU
    ops are registered)."""
    return bool(_isa[0])


def cpu_isa_info() -> dict:
    """``level`` (as :func:`cpu_isa`), ``error`` (why no level runs, or ""), ``built`` (the levels in this build),
    ``forced`` (EIMN_CPU_ISA chose)."""
    if _C is None:
        return {"level": "", "error": f"eimn_kernels._C is not built ({_error})", "built": [], "forced": False}
    level, err, built, forced = _isa
    return {"level": level, "error": err, "built": built.split(",") if built else [], "forced": forced == "1"}


def extension_loaded() -> bool:
    """True when eimn_kernels._C imported."""
    return _C is not None


def extension_error() -> str | None:
    """Why eimn_kernels._C failed to import, or None."""
    return _error


def built_with_cuda() -> bool:
    """True when the extension holds CUDA kernels."""
    return _C is not None and bool(torch.ops.eimn_C.built_with_cuda())


def empty_cpu_cache() -> None:
    """Free the CPU kernels' cache of freed large buffers (the CPU counterpart of ``torch.cuda.empty_cache``).

    The CPU ops take their outputs and scratch of 1 MiB or more from a cache that keeps freed buffers for reuse,
    which spares the page faults of fresh allocations; what it holds while unused is capped by the environment
    variable ``EIMN_CPU_POOL_MB`` (MiB, read at the first allocation; default 1024, 0 turns the cache off)."""
    if _C is not None:
        torch.ops.eimn_C.cpu_pool_clear()


def cpu_cache_info() -> dict:
    """The CPU buffer cache: ``cached_bytes``, ``cached_blocks`` (held while unused), ``hits``, ``misses``
    (requests served from / not from it) and ``cap_bytes``; all zero without the extension."""
    keys = ("cached_bytes", "cached_blocks", "hits", "misses", "cap_bytes")
    vals = list(torch.ops.eimn_C.cpu_pool_stats()) if _C is not None else [0] * len(keys)
    return dict(zip(keys, vals))
