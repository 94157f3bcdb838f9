"""bfloat16 GEMMs on CPU for inference: ``optimize_for_inference(model, precision="bf16")``.

The fused MOLRCM and SADFFM layers of a model so marked run, on float32 CPU tensors without autograd, as one C++ op
per layer (``eimn_C::molrcm_infer_forward`` / ``sadffm_infer_forward`` with ``bf16=True``): their 1x1 convolutions
(MOLRCM: Wq/Wv, Wf, Wo; SADFFM: W_in, W_out) with inputs and weights rounded to bfloat16 and float32 sums; the
depthwise convolutions, activations, gates, LayerNorms, DFFM and the residual stream stay float32, as do the tensors
the model takes and returns. Engine: AVX512-BF16 (``csrc/cpu/cpu_gemm_bf16.h``); a CPU without it gets a clear
error when the model is prepared. Other devices, float64 and autograd run the float32 path as before.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import _ext

__all__ = ["bf16_engine", "require_bf16_engine", "mark_bf16", "runs_bf16"]


def bf16_engine() -> str:
    """The CPU ops' bfloat16 GEMM engine on this CPU: ``"avx512_bf16"``, or ``""`` where there is none (no
    AVX512-BF16, no CPU kernels loaded, or ``EIMN_CPU_BF16=off``)."""
    if not _ext.cpu_kernels_loaded():
        return ""
    return str(torch.ops.eimn_C.cpu_bf16_engine())


def require_bf16_engine() -> str:
    """The engine name; RuntimeError with the reason where the CPU path cannot run bfloat16 GEMMs."""
    if not _ext.cpu_kernels_loaded():
        why = _ext.cpu_isa_info()["error"]
        raise RuntimeError(f"precision='bf16' on CPU needs the CPU kernels of eimn_kernels._C ({why})")
    eng = bf16_engine()
    if not eng:
        raise RuntimeError("precision='bf16' on CPU needs AVX512-BF16 instructions (Intel Cooper Lake, Sapphire "
                           "Rapids or later, AMD Zen 4 or later); this CPU has none (or EIMN_CPU_BF16=off): use "
                           "precision='fp32'")
    return eng


def mark_bf16(model: nn.Module) -> int:
    """Marks every fused MOLRCM / SADFFM layer below ``model`` (itself included) to run its 1x1 GEMMs in bfloat16 on
    CPU; returns how many were marked."""
    from .modules import MOLRCM, SADFFM
    n = 0
    for m in model.modules():
        if isinstance(m, (MOLRCM, SADFFM)):
            m.cpu_bf16 = True
            n += 1
    return n


def runs_bf16(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether a marked layer takes the bfloat16 path for input x: a float32 CPU tensor, backend auto or cpu, no
    autocast. Raises where a gradient is asked of it (the path is inference-only)."""
    if not layer.cpu_bf16 or x.device.type != "cpu" or x.dtype != torch.float32 or layer.backend not in ("auto", "cpu"):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters())):
        raise RuntimeError(f"{type(layer).__name__}: precision='bf16' layers are inference-only (no autograd); "
                           "run under torch.no_grad(), or prepare the model with precision='fp32' to train")
    return True
