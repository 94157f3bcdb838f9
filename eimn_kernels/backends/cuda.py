"""CUDA backend: the CUDA kernels of ``eimn_kernels._C`` (``csrc/cuda/``), float32, float16, bfloat16, float64.

``OPS`` maps each fused op to the ``torch.ops.eimn_C`` ops that run it (schemas: ``csrc/eimn_ops.cpp``; CUDA
registrations: ``csrc/cuda/molrcm_cuda.cpp``, ``sadffm_cuda.cpp``). The channel LayerNorm and conv1x1 have no CUDA
C++ kernel: this backend runs their Triton kernels where Triton is installed (else the ops are absent and the
functional API runs the reference). Empty when the extension is not built.
"""
from __future__ import annotations

import importlib.util

import torch

from .. import _ext
from .table import OpKernels

__all__ = ["DTYPES", "OPS", "available"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def available(device: torch.device) -> tuple[bool, str]:
    """CUDA tensors, with the extension built with CUDA."""
    if device.type != "cuda":
        return False, "the cuda backend runs on CUDA tensors only"
    if not _ext.extension_loaded():
        return False, f"eimn_kernels._C is not built ({_ext.extension_error()})"
    if not _ext.built_with_cuda():
        return False, "eimn_kernels._C was built without CUDA (rebuild with FORCE_CUDA=1)"
    return True, "CUDA kernels"


def _table() -> dict[str, OpKernels]:
    C = torch.ops.eimn_C
    ops = {
        # MOLRCM (csrc/cuda/molrcm_cuda.cpp -> molrcm_kernels.cu)
        "dw_mix": OpKernels(C.dw_mix_forward, C.dw_mix_backward),
        "proj_qv": OpKernels(C.proj_qv_forward, C.proj_qv_backward),
        "gate_out": OpKernels(C.gate_out_forward, C.gate_out_backward),
        # SADFFM halves (csrc/cuda/sadffm_cuda.cpp -> sadffm_gated_kernels.cu, sadffm_dffm_kernels.cu)
        "gated_dwconv": OpKernels(C.gated_dwconv_forward, C.gated_dwconv_backward),
        "dffm_out": OpKernels(C.dffm_out_forward, C.dffm_out_backward),
    }
    if importlib.util.find_spec("triton") is not None:  # no CUDA C++ kernels of these two: their Triton ones
        from . import triton as _triton
        ops["channel_layer_norm"] = _triton.OPS["channel_layer_norm"]
        ops["conv1x1"] = _triton.OPS["conv1x1"]
    return ops


OPS: dict[str, OpKernels] = _table() if _ext.extension_loaded() else {}
