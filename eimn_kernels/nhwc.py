"""The NHWC whole-block inference path: one folded EIMN block and the LayerNorm after it in five Triton kernels.

    molrcm_region -> molrcm_mix -> sadffm_body -> dffm_global -> dffm_apply   (triton_kernels/block_*.py)

Activations stay NHWC (channels_last) from block to block: the model's head output is converted once, by the first
block, and every block returns a channels_last NCHW-shaped tensor. Every 1x1 convolution is a tensor-core GEMM
(fp16 / bf16 operands, float32 as 3xTF32) with its epilogue in registers; q, U and h never reach HBM.
Used by ``optimize_for_inference`` for models on a CUDA device (``nhwc=True``, the default there); inference only:
with autograd, on a CPU tensor (outside the Triton interpreter) or in float64 the block runs its folded eager /
fused layers instead.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["block_forward", "NHWCEIMNBlock", "use_nhwc_blocks", "FusedAway", "CUDA_WEIGHTS"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The packed weights (triton_kernels/block_pack.Packed fields) in the order of the CUDA kernels' BlockWeights
# (csrc/cuda/block_kernels.cuh), the LayerNorm after the block's weight and bias last.
CUDA_WEIGHTS = ("wq_t", "wf_t", "wv_t", "wo_t", "win_t", "wout_t", "wlr_t", "bq", "w0", "b0", "w1", "b1", "w2", "b2",
                "bf", "bv", "bo", "b_in", "w_dw", "b_dw", "b_out", "ln_w", "ln_b", "b_lr", "w_sl", "w_gr", "b_gr",
                "w_ce", "b_ce", "w_sg", "b_se", "ls2")


def block_forward(x: torch.Tensor, pk, norm: tuple | None = None) -> torch.Tensor:
    """One folded EIMN block (and, with ``norm`` = (weight, bias, eps) float32, the LayerNorm after it).
    x: [N, H, W, C] NHWC contiguous float32 / float16 / bfloat16 -> the same shape and dtype."""
    from .triton_kernels.block_molrcm import molrcm_mix, molrcm_region
    from .triton_kernels.block_sadffm import dffm_apply, dffm_global, sadffm_body
    if x.dim() != 4 or x.shape[3] != pk.c or not x.is_contiguous():
        raise ValueError(f"block_forward: x must be NHWC contiguous [N, H, W, {pk.c}], got {tuple(x.shape)} "
                         f"strides {x.stride()}")
    N, H, W, _ = x.shape
    if x.numel() == 0:
        return torch.empty_like(x)
    a = molrcm_mix(molrcm_region(x, pk), x, pk)
    y, aloc, part, tpi = sadffm_body(a, pk)
    cg, kk = dffm_global(part, tpi, N, H * W, pk)
    return dffm_apply(a, y, aloc, cg, kk, pk, norm)


def _interpreting() -> bool:
    import os
    return os.environ.get("TRITON_INTERPRET") == "1"


class FusedAway(nn.Module):
    """Stands where a LayerNorm was fused into the block before it: returns its input (channels-first, so
    eimn.model.EIMN calls it without permutes)."""

    channels_first = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class NHWCEIMNBlock(nn.Module):
    """A folded EIMN block and the LayerNorm after it (``norm``: nn.LayerNorm(C) or fused ChannelLayerNorm, or
    None) on the NHWC block kernels. x: (N, C, H, W) -> (N, C, H, W) in channels_last memory format.

    Runs the kernels on CUDA tensors (and CPU tensors under TRITON_INTERPRET=1) of float32 / float16 / bfloat16
    without autograd; under autocast in the autocast dtype. Otherwise it runs ``block`` and ``norm`` as they are."""

    def __init__(self, block: nn.Module, norm: nn.Module | None = None):
        super().__init__()
        self.block, self.norm = block, norm
        self._packs: dict = {}

    def _pack(self, dtype: torch.dtype, device: torch.device):
        from .triton_kernels.block_pack import pack_block
        key = (dtype, device, tuple(p._version for p in self.parameters()))
        if key[:2] not in self._packs or self._packs[key[:2]][0] != key:
            self._packs[key[:2]] = (key, pack_block(self.block.attn, self.block.mlp, self.block.layer_scale_2,
                                                    dtype, device))
        return self._packs[key[:2]][1]

    def _fallback(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        if self.norm is None:
            return x
        if getattr(self.norm, "channels_first", False):
            return self.norm(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        if x.is_cuda and torch.is_autocast_enabled("cuda"):
            dt = torch.get_autocast_dtype("cuda")
        fast = ((x.is_cuda or _interpreting()) and dt in _DTYPES and x.dim() == 4
                and not (torch.is_grad_enabled() and (x.requires_grad
                                                      or any(p.requires_grad for p in self.parameters()))))
        if not fast:
            return self._fallback(x)
        xn = x.to(dt).permute(0, 2, 3, 1)
        if not xn.is_contiguous():
            xn = xn.contiguous()
        norm = None
        if self.norm is not None:
            norm = (self.norm.weight.detach().float().contiguous(), self.norm.bias.detach().float().contiguous(),
                    float(self.norm.eps))
        out = block_forward(xn, self._pack(dt, x.device), norm)
        return out.permute(0, 3, 1, 2)


def use_nhwc_blocks(model: nn.Module) -> int:
    """Swap every folded block of an EIMN ``model`` (and the LayerNorm after it) for an NHWCEIMNBlock, in place.
    Blocks the kernels cannot run (block_pack.unsupported) are left as they are. Returns the number swapped."""
    from .inference import FoldedEIMNBlock
    from .triton_kernels.block_pack import unsupported
    n = 0
    names = model.channel_norm_names() if hasattr(model, "channel_norm_names") else []
    for i, norm_name in enumerate(names, start=1):
        holder = getattr(model, f"block{i}", None)
        if not isinstance(holder, nn.Sequential) or len(holder) != 1 or not isinstance(holder[0], FoldedEIMNBlock):
            continue
        blk = holder[0]
        if unsupported(blk.attn, blk.mlp) is not None:
            continue
        holder[0] = NHWCEIMNBlock(blk, getattr(model, norm_name))
        setattr(model, norm_name, FusedAway())
        n += 1
    return n
