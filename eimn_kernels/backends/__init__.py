"""Backend choice for eimn_kernels ops.

Backends:
* ``reference``: the pure-PyTorch eager composition (:mod:`eimn_kernels.reference`), autograd by torch.
* ``cpu``: C++ kernels in ``eimn_kernels._C`` (OpenMP), float32 / float64, CPU tensors (:mod:`.cpu`).
* ``cuda``: CUDA kernels in ``eimn_kernels._C``, float32 / float16 / bfloat16 / float64, CUDA tensors (:mod:`.cuda`).
* ``triton``: Triton kernels, CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``) (:mod:`.triton`).
* ``auto``: the fastest available for the tensor's device and dtype.

Each kernel backend is a module with ``available(device) -> (bool, reason)``, ``DTYPES`` and ``OPS``, its op table
(op name -> :class:`~eimn_kernels.backends.table.OpKernels`; an op the backend lacks is absent).
"""
from __future__ import annotations

import os

import torch

from . import cpu, cuda, triton
from .table import OpKernels

BACKENDS = ("reference", "cpu", "triton", "cuda")
KERNEL_BACKENDS = ("cpu", "triton", "cuda")
_MODULES = {"cpu": cpu, "cuda": cuda, "triton": triton}

__all__ = ["BACKENDS", "KERNEL_BACKENDS", "OpKernels", "get_impl", "op_kernels", "resolve_backend",
           "available_backends", "backend_status"]


def get_impl(backend: str):
    """The kernel module for ``backend`` ('cpu', 'triton' or 'cuda')."""
    mod = _MODULES.get(backend)
    if mod is None:
        raise ValueError(f"unknown kernel backend {backend!r}; expected one of {KERNEL_BACKENDS}")
    return mod


def op_kernels(backend: str, op: str) -> OpKernels | None:
    """The callables that run op ``op`` on kernel backend ``backend``, or None where it has none."""
    return get_impl(backend).OPS.get(op)


def backend_status(backend: str, device: torch.device | str = "cpu") -> tuple[bool, str]:
    """(available, reason) for running ``backend`` on ``device``."""
    if backend == "reference":
        return True, "pure PyTorch"
    return get_impl(backend).available(torch.device(device))


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` here, 'reference' first."""
    return [b for b in BACKENDS if backend_status(b, device)[0]]


def _auto(x: torch.Tensor) -> str:
    dev = x.device
    order = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}.get(dev.type, ())
    if os.environ.get("EIMN_KERNELS_AUTO_TRITON") == "1":
        order = ("triton",) + order
    for b in order:
        ok, _ = backend_status(b, dev)
        if ok and x.dtype in get_impl(b).DTYPES:
            return b
    return "reference"


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """Turn ``backend`` ('auto' or a name) into a concrete backend for input ``x``.

    Raises ValueError for an unknown name, RuntimeError for a backend that cannot run
    here, TypeError for a dtype the backend does not support.
    """
    if backend == "auto":
        return _auto(x)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    if backend == "reference":
        return backend
    ok, why = backend_status(backend, x.device)
    if not ok:
        raise RuntimeError(f"backend {backend!r} is not available for {x.device.type} tensors: {why}")
    dtypes = get_impl(backend).DTYPES
    if x.dtype not in dtypes:
        raise TypeError(f"backend {backend!r} does not support {x.dtype}; supported: "
                        f"{', '.join(str(d).replace('torch.', '') for d in dtypes)}")
    return backend
