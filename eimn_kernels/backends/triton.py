"""Triton backend (float32, float16, bfloat16, float64).

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests).
Kernels live in :mod:`eimn_kernels.triton_kernels`.
"""
from __future__ import annotations

import os

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def available(device: torch.device) -> tuple[bool, str]:
    """CUDA tensors with triton installed; CPU tensors only under TRITON_INTERPRET=1."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return False, f"triton is not installed ({e})"
    if device.type == "cuda":
        return True, "Triton kernels"
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return True, "Triton interpreter (TRITON_INTERPRET=1)"
    return False, "triton runs on CUDA tensors (CPU tensors only with TRITON_INTERPRET=1)"


_KERNEL_MODULE = {"dw_mix": "molrcm", "proj_qv": "molrcm", "gate_out": "molrcm",
                  "gated_dwconv": "sadffm", "dffm_out": "sadffm", "channel_layer_norm": "channel_norm"}


def __getattr__(name: str):
    op = name.rsplit("_", 1)[0]  # NAME_forward / NAME_backward
    if op in _KERNEL_MODULE and name.rsplit("_", 1)[1] in ("forward", "backward"):
        import importlib
        mod = importlib.import_module(f"eimn_kernels.triton_kernels.{_KERNEL_MODULE[op]}")
        return getattr(mod, name)
    raise AttributeError(name)
