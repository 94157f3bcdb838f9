"""CPU backend: the C++/OpenMP kernels of ``eimn_kernels._C`` (``csrc/cpu/``), float32 and float64.

``OPS`` maps each fused op to the ``torch.ops.eimn_C`` ops that run it (schemas: ``csrc/eimn_ops.cpp``; CPU
kernels: ``csrc/cpu/molrcm_cpu.cpp``, ``sadffm_cpu.cpp``, ``channel_norm_cpu.cpp``). Empty when the extension
is not built.
"""
from __future__ import annotations

import torch

from .. import _ext
from .table import OpKernels

__all__ = ["DTYPES", "OPS", "available"]

DTYPES = (torch.float32, torch.float64)


def available(device: torch.device) -> tuple[bool, str]:
    """CPU tensors, with the extension built and a level of its kernels that this CPU runs (the reason names the
    level: "C++ kernels (avx512)")."""
    if device.type != "cpu":
        return False, "the cpu backend runs on CPU tensors only"
    if not _ext.extension_loaded():
        return False, f"eimn_kernels._C is not built ({_ext.extension_error()})"
    info = _ext.cpu_isa_info()
    if not info["level"]:
        return False, info["error"]
    return True, f"C++ kernels ({info['level']})"


def _sadffm_backward_recompute(grad_out, *args):
    """Whole SADFFM layer backward without a stash (the forward ran without one): makes the stash first."""
    *tensors, eps = args
    _, stash = torch.ops.eimn_C.sadffm_forward_stash(*tensors, eps)
    return torch.ops.eimn_C.sadffm_backward_stash(grad_out, *tensors, stash, eps)


def _table() -> dict[str, OpKernels]:
    C = torch.ops.eimn_C
    return {
        # MOLRCM (csrc/cpu/molrcm_cpu.cpp)
        "dw_mix": OpKernels(C.dw_mix_forward, C.dw_mix_backward),
        "proj_qv": OpKernels(C.proj_qv_forward, C.proj_qv_backward),
        "gate_out": OpKernels(C.gate_out_forward, C.gate_out_backward),
        # SADFFM halves and the whole layer (csrc/cpu/sadffm_cpu.cpp). The whole layer has no plain forward: with a
        # gradient needed it stashes (h passed to the second half in packed panels inside the stash), without one
        # its forward-only kernel runs; a backward without the stash makes it first.
        "gated_dwconv": OpKernels(C.gated_dwconv_forward, C.gated_dwconv_backward,
                                  C.gated_dwconv_forward_stash, C.gated_dwconv_backward_stash),
        "dffm_out": OpKernels(C.dffm_out_forward, C.dffm_out_backward,
                              C.dffm_out_forward_stash, C.dffm_out_backward_stash),
        "sadffm": OpKernels(backward=_sadffm_backward_recompute, forward_stash=C.sadffm_forward_stash,
                            backward_stash=C.sadffm_backward_stash, infer=C.sadffm_infer_forward),
        # 1x1 convolution with its epilogue (csrc/cpu/conv1x1_cpu.cpp): large-kernel attention with dw_mix
        "conv1x1": OpKernels(C.conv1x1_forward, C.conv1x1_backward),
        # EIMN's LayerNorm between blocks (csrc/cpu/channel_norm_cpu.cpp)
        "channel_layer_norm": OpKernels(C.channel_layer_norm_forward, C.channel_layer_norm_backward,
                                        C.channel_layer_norm_forward_stash, C.channel_layer_norm_backward_stash),
    }


OPS: dict[str, OpKernels] = _table() if _ext.cpu_kernels_loaded() else {}
