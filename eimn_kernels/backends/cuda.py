"""CUDA backend: CUDA kernels of eimn_kernels._C (float32, float16, bfloat16, float64)."""
from __future__ import annotations

import torch

from .. import _ext

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def available(device: torch.device) -> tuple[bool, str]:
    """CUDA tensors, with the extension built with CUDA."""
    if device.type != "cuda":
        return False, "the cuda backend runs on CUDA tensors only"
    if not _ext.extension_loaded():
        return False, f"eimn_kernels._C is not built ({_ext.extension_error()})"
    if not _ext.built_with_cuda():
        return False, "eimn_kernels._C was built without CUDA (rebuild with FORCE_CUDA=1)"
    return True, "CUDA kernels"


# Ops without a CUDA C++ kernel: the cuda backend runs their Triton kernels (eimn_kernels.ops.norm falls back to
# the reference when Triton is not installed).
_TRITON_OPS = ("channel_layer_norm",)


def __getattr__(name: str):
    if name.rsplit("_", 1)[0] in _TRITON_OPS:
        from . import triton as _triton
        return getattr(_triton, name)
    if name.endswith("_forward") or name.endswith("_backward"):
        return getattr(torch.ops.eimn_C, name)
    raise AttributeError(name)
