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


def extension_loaded() -> bool:
    """True when eimn_kernels._C imported."""
    return _C is not None


def extension_error() -> str | None:
    """Why eimn_kernels._C failed to import, or None."""
    return _error


def built_with_cuda() -> bool:
    """True when the extension holds CUDA kernels."""
    return _C is not None and bool(torch.ops.eimn_C.built_with_cuda())
