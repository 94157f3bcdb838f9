"""Triton kernels of the channel LayerNorm of an NCHW image (eimn_C schemas channel_layer_norm_forward /
_backward, same argument order): y = (x - mean_C x) * rstd * w + b per pixel.

One program per (tile of BP pixels, image): the C x BP block is loaded once (coalesced along the pixels), its
statistics computed in registers (sadffm_dffm._layernorm, the DFFM gate's own LayerNorm), the output written
once. Backward: the statistics recomputed, dL/dx written, and per-program partial sums of dL/dw, dL/db reduced on
the host in a fixed order (deterministic, no atomics). Accumulation fp32 (fp64 for fp64).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .sadffm_common import acc_dtype, tl_dtype
from .sadffm_dffm import _layernorm

__all__ = ["channel_layer_norm_forward", "channel_layer_norm_backward"]

BLOCK_P = 64  # pixels per program


@triton.jit
def _tile(HW, C, BC: tl.constexpr, BP: tl.constexpr):
    """This program's [BC, BP] block of image program_id(1): (element offsets, mask, channel offsets, channel
    mask)."""
    n = tl.program_id(1).to(tl.int64)
    offs_p = tl.program_id(0) * BP + tl.arange(0, BP)
    offs_c = tl.arange(0, BC)
    mc = offs_c < C
    m = mc[:, None] & (offs_p < HW)[None, :]
    return n * C * HW + offs_c[:, None] * HW + offs_p[None, :], m, offs_c, mc


@triton.jit
def _cln_fwd_kernel(X, LNW, LNB, Y, HW, C, eps, BC: tl.constexpr, BP: tl.constexpr, ACC: tl.constexpr):
    ptr, m, offs_c, mc = _tile(HW, C, BC, BP)
    x = tl.load(X + ptr, mask=m, other=0.0).to(ACC)
    y, _, _ = _layernorm(x, mc, LNW, LNB, offs_c, C, eps, ACC)
    tl.store(Y + ptr, y.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _cln_bwd_kernel(GY, X, LNW, GX, PART, HW, C, eps, BC: tl.constexpr, BP: tl.constexpr, ACC: tl.constexpr):
    ptr, m, offs_c, mc = _tile(HW, C, BC, BP)
    x = tl.load(X + ptr, mask=m, other=0.0).to(ACC)
    _, xhat, rstd = _layernorm(x, mc, LNW, LNW, offs_c, C, eps, ACC)
    gy = tl.load(GY + ptr, mask=m, other=0.0).to(ACC)
    w = tl.load(LNW + offs_c, mask=mc, other=0.0).to(ACC)
    g = gy * w[:, None]
    ma = tl.sum(g, axis=0) / C
    mb = tl.sum(g * xhat, axis=0) / C
    gx = rstd[None, :] * (g - ma[None, :] - xhat * mb[None, :])
    tl.store(GX + ptr, gx.to(GX.dtype.element_ty), mask=m)
    part = PART + (tl.program_id(1).to(tl.int64) * tl.num_programs(0) + tl.program_id(0)) * 2 * C
    tl.store(part + offs_c, tl.sum(gy * xhat, axis=1), mask=mc)
    tl.store(part + C + offs_c, tl.sum(gy, axis=1), mask=mc)


def _check(op: str, x: torch.Tensor, *ts: torch.Tensor) -> None:
    tl_dtype(x.dtype)  # raises for an unsupported dtype
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-d (N, C, H, W), got shape {tuple(x.shape)}")
    for t in (x, *ts):
        if t.dtype != x.dtype or t.device != x.device or not t.is_contiguous():
            raise ValueError(f"{op}: every tensor must be contiguous {x.dtype} on {x.device}, got {t.dtype} on "
                             f"{t.device} (contiguous: {t.is_contiguous()})")


def _grid(x: torch.Tensor):
    return (triton.cdiv(x.shape[2] * x.shape[3], BLOCK_P), x.shape[0])


def channel_layer_norm_forward(x, w, b, eps):
    """x: (N, C, H, W); w, b: (C,) -> y: (N, C, H, W) in x's dtype (LayerNorm over the channels of each pixel)."""
    _check("channel_layer_norm_forward", x, w, b)
    y = torch.empty_like(x)
    C = x.shape[1]
    _cln_fwd_kernel[_grid(x)](x, w, b, y, x.shape[2] * x.shape[3], C, float(eps), BC=triton.next_power_of_2(C),
                              BP=BLOCK_P, ACC=tl_dtype(acc_dtype(x.dtype)))
    return y


def channel_layer_norm_backward(grad_y, x, w, b, eps):
    """grad_y, x: (N, C, H, W); w, b: (C,) -> (grad_x in x's dtype, grad_w, grad_b in w's dtype)."""
    _check("channel_layer_norm_backward", x, grad_y, w, b)
    C = x.shape[1]
    grid = _grid(x)
    gx = torch.empty_like(x)
    part = torch.empty(grid[1] * grid[0], 2 * C, dtype=acc_dtype(x.dtype), device=x.device)
    _cln_bwd_kernel[grid](grad_y, x, w, gx, part, x.shape[2] * x.shape[3], C, float(eps),
                          BC=triton.next_power_of_2(C), BP=BLOCK_P, ACC=tl_dtype(acc_dtype(x.dtype)))
    gwb = part.sum(0).to(w.dtype)
    return gx, gwb[:C].clone(), gwb[C:].clone()
