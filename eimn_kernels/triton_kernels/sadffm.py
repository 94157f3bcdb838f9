"""Triton backend of the SADFFM ops (eimn_C schemas gated_dwconv_* and dffm_out_*, same argument order).

Inputs are contiguous NCHW tensors of one dtype (float32, float16, bfloat16 or float64) on a CUDA device,
or CPU tensors under TRITON_INTERPRET=1. Accumulation is fp32 (fp64 for fp64); outputs are in the input
dtype; weight gradients are reduced in the accumulator dtype from per-program partials in a fixed order
(deterministic, no atomics) and then cast. Kernels: sadffm_gated.py, sadffm_dffm.py, sadffm_common.py;
block sizes: sadffm_config.py. Full shape checks live in eimn_kernels/ops/sadffm.py; the checks here
only guard the kernels against tensors they cannot address.
"""
from __future__ import annotations

import torch

from . import sadffm_dffm as _dffm
from . import sadffm_gated as _gated

__all__ = ["gated_dwconv_forward", "gated_dwconv_backward", "dffm_out_forward", "dffm_out_backward"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check(op: str, names: tuple, tensors: tuple) -> None:
    ref = tensors[0]
    if ref.dim() != 4:
        raise ValueError(f"{op}: {names[0]} must be 4-d (N, C, H, W), got shape {tuple(ref.shape)}")
    if ref.dtype not in _DTYPES:
        raise TypeError(f"{op}: triton kernels support float32/float16/bfloat16/float64, got {ref.dtype}")
    for n, t in zip(names, tensors):
        if t.dtype != ref.dtype or t.device != ref.device:
            raise TypeError(f"{op}: {n} is {t.dtype} on {t.device}, expected {ref.dtype} on {ref.device}")
        if not t.is_contiguous():
            raise ValueError(f"{op}: {n} must be contiguous")


def _check_gated(op, names, tensors, x, w_in, w_dw):
    _check(op, names, tensors)
    if w_in.dim() != 4 or w_in.shape[1:] != (x.shape[1], 1, 1) or w_in.shape[0] % 2:
        raise ValueError(f"{op}: w_in must be (2*hidden, {x.shape[1]}, 1, 1), got {tuple(w_in.shape)}")
    if w_dw.dim() != 4 or w_dw.shape[:2] != (w_in.shape[0], 1) or w_dw.shape[2] != w_dw.shape[3] \
            or w_dw.shape[2] % 2 == 0:
        raise ValueError(f"{op}: w_dw must be ({w_in.shape[0]}, 1, K, K) with odd K, got {tuple(w_dw.shape)}")


def gated_dwconv_forward(x, w_in, b_in, w_dw, b_dw):
    """x: (N, C, H, W); w_in: (2*hid, C, 1, 1), b_in: (2*hid,), w_dw: (2*hid, 1, K, K), b_dw: (2*hid,)
    -> h = GELU(t[:, :hid]) * t[:, hid:], t = DW_K(W_in x + b_in) + b_dw: (N, hid, H, W), x's dtype."""
    a = (x, w_in, b_in, w_dw, b_dw)
    _check_gated("gated_dwconv_forward", ("x", "w_in", "b_in", "w_dw", "b_dw"), a, x, w_in, w_dw)
    return _gated.gated_dwconv_forward(*a)


def gated_dwconv_backward(grad_h, x, w_in, b_in, w_dw, b_dw):
    """grad_h: (N, hid, H, W), the rest as the forward -> (grad_x, grad_w_in, grad_b_in, grad_w_dw, grad_b_dw)."""
    a = (grad_h, x, w_in, b_in, w_dw, b_dw)
    _check_gated("gated_dwconv_backward", ("grad_h", "x", "w_in", "b_in", "w_dw", "b_dw"), a, x, w_in, w_dw)
    if grad_h.shape != (x.shape[0], w_in.shape[0] // 2, *x.shape[2:]):
        raise ValueError(f"gated_dwconv_backward: grad_h has shape {tuple(grad_h.shape)}, expected "
                         f"{(x.shape[0], w_in.shape[0] // 2, *x.shape[2:])}")
    return _gated.gated_dwconv_backward(*a)


_DFFM_NAMES = ("h", "w_out", "b_out", "ln_w", "ln_b", "w_gr", "b_gr", "w_lr", "b_lr", "w_ce", "b_ce", "w_se", "b_se")


def _check_dffm(op, names, tensors, h, w_out, w_gr, w_lr, w_ce, w_se):
    _check(op, names, tensors)
    C, R = w_out.shape[0], w_gr.shape[0]
    if w_out.shape[1:] != (h.shape[1], 1, 1) or w_lr.shape != w_gr.shape or w_gr.shape[1:] != (C, 1, 1) \
            or w_ce.shape != (C, R, 1, 1) or w_se.shape != (1, 2 * R, 1, 1):
        raise ValueError(f"{op}: inconsistent weight shapes w_out {tuple(w_out.shape)}, w_gr {tuple(w_gr.shape)}, "
                         f"w_lr {tuple(w_lr.shape)}, w_ce {tuple(w_ce.shape)}, w_se {tuple(w_se.shape)} "
                         f"for h {tuple(h.shape)}")


def dffm_out_forward(h, w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se, eps):
    """h: (N, hid, H, W); w_out: (C, hid, 1, 1); b_out, ln_w, ln_b, b_ce: (C,); w_gr, w_lr: (R, C, 1, 1);
    b_gr, b_lr: (R,); w_ce: (C, R, 1, 1); w_se: (1, 2R, 1, 1); b_se: (1,); eps: float
    -> y * c * s: (N, C, H, W) in h's dtype (see reference.dffm_out)."""
    a = (h, w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se)
    _check_dffm("dffm_out_forward", _DFFM_NAMES, a, h, w_out, w_gr, w_lr, w_ce, w_se)
    return _dffm.dffm_out_forward(*a, float(eps))


def dffm_out_backward(grad_out, h, w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se,
                      eps):
    """grad_out: (N, C, H, W), the rest as the forward -> the 13 gradients (h, w_out, ..., b_se)."""
    a = (h, w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se)
    _check_dffm("dffm_out_backward", ("grad_out",) + _DFFM_NAMES, (grad_out,) + a, h, w_out, w_gr, w_lr, w_ce, w_se)
    if grad_out.shape != (h.shape[0], w_out.shape[0], *h.shape[2:]):
        raise ValueError(f"dffm_out_backward: grad_out has shape {tuple(grad_out.shape)}, expected "
                         f"{(h.shape[0], w_out.shape[0], *h.shape[2:])}")
    return _dffm.dffm_out_backward(grad_out, *a, float(eps))
