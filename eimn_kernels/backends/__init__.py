"""Backend choice for eimn_kernels ops.

Backends:
* ``reference``: the pure-PyTorch eager composition (:mod:`eimn_kernels.reference`), autograd by torch.
* ``cpu``: C++ kernels in ``eimn_kernels._C`` (OpenMP), float32 / float64, CPU tensors.
* ``cuda``: CUDA kernels in ``eimn_kernels._C``, float32 / float16 / bfloat16 / float64, CUDA tensors.
* ``triton``: Triton kernels, CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``).
* ``auto``: the fastest available for the tensor's device and dtype.

Each kernel backend is a module exposing ``available(device) -> (bool, reason)``,
``SUPPORTED_DTYPES`` and, per op NAME, ``NAME_forward`` / ``NAME_backward``.
"""
from __future__ import annotations

import importlib
import os

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
KERNEL_BACKENDS = ("cpu", "triton", "cuda")
_MODULES = {"cpu": "eimn_kernels.backends.cpu", "cuda": "eimn_kernels.backends.cuda",
            "triton": "eimn_kernels.backends.triton"}

__all__ = ["BACKENDS", "get_impl", "resolve_backend", "available_backends", "backend_status"]


_LOADED: dict = {}  # backend name -> module; a plain dict lookup that torch.compile can trace


def get_impl(backend: str):
    """The kernel module for ``backend`` ('cpu', 'triton' or 'cuda')."""
    mod = _LOADED.get(backend)
    if mod is not None:
        return mod
    if backend not in _MODULES:
        raise ValueError(f"unknown kernel backend {backend!r}; expected one of {KERNEL_BACKENDS}")
    mod = _LOADED[backend] = importlib.import_module(_MODULES[backend])
    return mod


def backend_status(backend: str, device: torch.device | str = "cpu") -> tuple[bool, str]:
    """(available, reason) for running ``backend`` on ``device``."""
    if backend == "reference":
        return True, "pure PyTorch"
    try:
        return get_impl(backend).available(torch.device(device))
    except ImportError as e:
        return False, f"{backend} backend cannot be imported: {e}"


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
        if ok and x.dtype in get_impl(b).SUPPORTED_DTYPES:
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
    dtypes = get_impl(backend).SUPPORTED_DTYPES
    if x.dtype not in dtypes:
        raise TypeError(f"backend {backend!r} does not support {x.dtype}; supported: "
                        f"{', '.join(str(d).replace('torch.', '') for d in dtypes)}")
    return backend


# Import the backend modules up front (they are light: no triton or CUDA import happens here),
# so that torch.compile never has to trace an import inside a compiled function.
for _name in _MODULES:
    get_impl(_name)
del _name
