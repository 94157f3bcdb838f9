"""Eval-only folding of VAN-style blocks (large-kernel attention), used by ``optimize_for_inference``.

A VAN block (children norm1, attn, norm2, mlp, layer_scale_1, layer_scale_2)

    x = x + ls1 * attn(BN1(x)),      attn(u) = proj_2(LKA(GELU(proj_1(u)))) + u
    x = x + ls2 * mlp(BN2(x)),       mlp = 1x1 -> depthwise 3x3 -> GELU -> 1x1

becomes, exactly (the algebra in float64, stored in the model's dtype):

    a   = x * (1 + ls1 s1) + proj_2'(LKA(GELU(proj_1'(x))))    proj_1' = proj_1 . BN1, proj_2' = ls1 proj_2
                                                               (its bias also takes ls1 t1; BN1 = s1 x + t1)
    out = a + fc2'(GELU(dw(fc1'(a))))                          fc1' = fc1 . BN2, fc2' = ls2 fc2

with the 1x1s, GELU, the gate and both residuals in the fused ops' epilogues (``fused=True``; on CPU the whole MLP
is one kernel, eimn_C::convmlp_infer_forward: its hidden channels never reach memory) or as plain PyTorch operators
(``fused=False``). A Conv2d followed by a BatchNorm2d in an nn.Sequential (VAN's patch embeddings) folds
into the conv.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .inference_fold import bn_affine, fold_input_affine, fold_output_scale
from .lka_modules import is_lka_attention
from .backends import resolve_backend
from .ops import conv1x1, dw_mix, lka
from .ops.lka import cpu_direct, lka_attention_cpu

__all__ = ["FoldedLKABlock", "is_van_block", "fold_van_block", "fold_conv_bn"]

# Widths from which the MLP's depthwise 3x3 runs as our dw_mix (one conv, the rest identity) rather than PyTorch's,
# where the whole-MLP CPU kernel does not run (autograd on CPU, other backends). Measured on the 2-core Xeon, 2
# threads, ms per call (a GPU is unmeasured): 1x256x56x56 0.48 vs 4.21 (oneDNN's NCHW depthwise);
# 1x512x28x28 0.70 vs 0.36, 1x640x14x14 0.24 vs 0.18, 1x1024x7x7 0.13 vs 0.12.
_OWN_DW_MIN_W = 32


def _is_mlp(m: nn.Module, dim: int) -> bool:
    """nn.Sequential(1x1 dim -> hid, depthwise 3x3 'same' on hid, exact GELU, 1x1 hid -> dim), with biases."""
    if not isinstance(m, nn.Sequential) or len(m) != 4:
        return False
    fc1, dw, act, fc2 = m
    ok1 = isinstance(fc1, nn.Conv2d) and fc1.kernel_size == (1, 1) and fc1.in_channels == dim and fc1.groups == 1
    hid = fc1.out_channels if ok1 else -1
    okd = (isinstance(dw, nn.Conv2d) and dw.groups == hid == dw.in_channels == dw.out_channels
           and dw.kernel_size[0] == dw.kernel_size[1] and dw.kernel_size[0] % 2 == 1 and dw.stride == (1, 1)
           and dw.padding == (dw.kernel_size[0] // 2,) * 2 and dw.dilation == (1, 1))
    ok2 = (isinstance(fc2, nn.Conv2d) and fc2.kernel_size == (1, 1) and fc2.in_channels == hid
           and fc2.out_channels == dim and fc2.groups == 1)
    return (ok1 and okd and ok2 and isinstance(act, nn.GELU) and act.approximate == "none"
            and all(c.bias is not None and c.stride == (1, 1) for c in (fc1, fc2)))


def is_van_block(m: nn.Module) -> bool:
    """A VAN block: eval-foldable BatchNorms norm1 / norm2, an LKA attention ``attn``, the 4-layer ``mlp`` and the
    two layer scales."""
    if not all(hasattr(m, n) for n in ("norm1", "attn", "norm2", "mlp", "layer_scale_1", "layer_scale_2")):
        return False
    if not (isinstance(m.norm1, nn.BatchNorm2d) and isinstance(m.norm2, nn.BatchNorm2d)
            and is_lka_attention(m.attn)):
        return False
    dim = m.attn.proj_1.in_channels
    return _is_mlp(m.mlp, dim) and m.layer_scale_1.shape == (dim,) and m.layer_scale_2.shape == (dim,)


class FoldedLKABlock(nn.Module):
    """Inference VAN block (see the module doc). x: (N, dim, H, W) -> (N, dim, H, W). Built by fold_van_block."""

    def __init__(self, attn: nn.Module, res_scale: torch.Tensor, mlp: nn.Sequential, fused: bool, backend: str):
        super().__init__()
        self.attn, self.mlp, self.fused, self.backend = attn, mlp, fused, backend
        self.res_scale = nn.Parameter(res_scale.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        at, sgu = self.attn, self.attn.spatial_gating_unit
        fc1, dw, _, fc2 = self.mlp
        xs = x * self.res_scale[:, None, None]
        if not self.fused:
            u = sgu(F.gelu(at.proj_1(x)))
            a = at.proj_2(u) + xs
            return a + fc2(F.gelu(dw(fc1(a))))
        b = self.backend
        if cpu_direct(resolve_backend(b, x), x):  # the C++ kernels straight, the MLP as convmlp_infer_forward
            return self._cpu_inference(x, xs)
        u = conv1x1(x, at.proj_1.weight, at.proj_1.bias, act="gelu", backend=b)
        u = lka(u, sgu.conv0.weight, sgu.conv0.bias, sgu.conv_spatial.weight, sgu.conv_spatial.bias,
                sgu.conv1.weight, sgu.conv1.bias, sgu.conv_spatial.dilation[0], backend=b)
        a = conv1x1(u, at.proj_2.weight, at.proj_2.bias, residual=xs, backend=b)
        h = fc1(a)
        if h.shape[-1] >= _OWN_DW_MIN_W:  # the MLP's depthwise conv: ours where it is faster (see _OWN_DW_MIN_W)
            none_w, none_b = h.new_empty(0, 1, 1, 1), h.new_empty(0)
            h = dw_mix(h, dw.weight, dw.bias, none_w, none_b, none_w, none_b, 0, h.shape[1], backend=b)
        else:
            h = dw(h)
        return conv1x1(F.gelu(h), fc2.weight, fc2.bias, residual=a, backend=b)

    def _cpu_inference(self, x: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """The fused path on CPU without autograd: the C++ ops called straight (they check their inputs; the block's
        weights were checked when it was folded), sparing the functional wrappers' ~20-40 us a call."""
        at, sgu = self.attn, self.attn.spatial_gating_unit
        fc1, dw, _, fc2 = self.mlp
        a = lka_attention_cpu(x, at.proj_1.weight, at.proj_1.bias, sgu.conv0.weight, sgu.conv0.bias,
                              sgu.conv_spatial.weight, sgu.conv_spatial.bias, sgu.conv1.weight, sgu.conv1.bias,
                              at.proj_2.weight, at.proj_2.bias, sgu.conv_spatial.dilation[0], xs)  # + x (1 + ls1 s1)
        return torch.ops.eimn_C.convmlp_infer_forward(a, fc1.weight, fc1.bias, dw.weight, dw.bias, fc2.weight,
                                                      fc2.bias, True)


@torch.no_grad()
def fold_van_block(block: nn.Module, fused: bool, backend: str) -> FoldedLKABlock:
    """The FoldedLKABlock of an eval-mode VAN block (its modules rewritten in place: fold a deep copy)."""
    at, mlp = block.attn, block.mlp
    s1, t1 = bn_affine(block.norm1)
    s2, t2 = bn_affine(block.norm2)
    ls1, ls2 = block.layer_scale_1.double(), block.layer_scale_2.double()
    fold_input_affine(at.proj_1, s1, t1)
    fold_output_scale(at.proj_2, ls1)
    at.proj_2.bias = nn.Parameter((at.proj_2.bias.double() + ls1 * t1).to(at.proj_2.bias.dtype))
    fold_input_affine(mlp[0], s2, t2)
    fold_output_scale(mlp[3], ls2)
    res_scale = (1.0 + ls1 * s1).to(block.layer_scale_1.dtype)
    return FoldedLKABlock(at, res_scale, mlp, fused, backend)


@torch.no_grad()
def fold_conv_bn(seq: nn.Sequential) -> int:
    """Fold every eval BatchNorm2d that directly follows a Conv2d in ``seq`` into that conv (the BN becomes an
    nn.Identity). Returns how many were folded."""
    n = 0
    for i in range(len(seq) - 1):
        conv, bn = seq[i], seq[i + 1]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.out_channels == bn.num_features:
            s, t = bn_affine(bn)
            dt = conv.weight.dtype
            b = conv.bias.double() if conv.bias is not None else torch.zeros_like(s)
            conv.weight = nn.Parameter((conv.weight.double() * s[:, None, None, None]).to(dt))
            conv.bias = nn.Parameter((b * s + t).to(dt))
            seq[i + 1] = nn.Identity()
            n += 1
    return n
