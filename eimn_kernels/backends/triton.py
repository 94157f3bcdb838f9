"""Triton backend (float32, float16, bfloat16, float64): the kernels of :mod:`eimn_kernels.triton_kernels`.

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests). ``OPS`` maps each fused op to the
functions of ``triton_kernels/molrcm.py``, ``sadffm.py``, ``conv1x1.py`` and ``channel_norm.py`` that run it; a
module (and Triton itself, which takes seconds to import) is imported on the first call of one of its kernels.
"""
from __future__ import annotations

import importlib
import os

import torch

from .table import OpKernels

__all__ = ["DTYPES", "OPS", "available"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


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


class _Lazy:
    """``eimn_kernels.triton_kernels.<module>.<name>``, imported on the first call."""

    def __init__(self, module: str, name: str):
        self.module, self.name, self._fn = module, name, None

    def resolve(self):
        """The kernel function itself (imports its module, and Triton, the first time)."""
        if self._fn is None:
            self._fn = getattr(importlib.import_module(f"eimn_kernels.triton_kernels.{self.module}"), self.name)
        return self._fn

    def __call__(self, *args):
        return self.resolve()(*args)

    def __repr__(self) -> str:
        return f"triton_kernels.{self.module}.{self.name}"


OPS: dict[str, OpKernels] = {
    # triton_kernels/molrcm.py
    "dw_mix": OpKernels(_Lazy("molrcm", "dw_mix_forward"), _Lazy("molrcm", "dw_mix_backward")),
    "proj_qv": OpKernels(_Lazy("molrcm", "proj_qv_forward"), _Lazy("molrcm", "proj_qv_backward")),
    "gate_out": OpKernels(_Lazy("molrcm", "gate_out_forward"), _Lazy("molrcm", "gate_out_backward")),
    # triton_kernels/sadffm.py
    "gated_dwconv": OpKernels(_Lazy("sadffm", "gated_dwconv_forward"), _Lazy("sadffm", "gated_dwconv_backward")),
    "dffm_out": OpKernels(_Lazy("sadffm", "dffm_out_forward"), _Lazy("sadffm", "dffm_out_backward")),
    # triton_kernels/conv1x1.py
    "conv1x1": OpKernels(_Lazy("conv1x1", "conv1x1_forward"), _Lazy("conv1x1", "conv1x1_backward")),
    # triton_kernels/channel_norm.py
    "channel_layer_norm": OpKernels(_Lazy("channel_norm", "channel_layer_norm_forward"),
                                    _Lazy("channel_norm", "channel_layer_norm_backward")),
}
