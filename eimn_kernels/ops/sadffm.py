"""SADFFM fused ops: gated depthwise front (gated_dwconv), linear_out + DFFM gate (dffm_out), and the whole layer
(sadffm_layer: one forward-only kernel when no gradient is needed)."""
from __future__ import annotations

import torch

from .. import reference
from ..backends import op_kernels, resolve_backend
from ._registry import LIB, OpSpec, register
from .checks import check_image, check_weight, empty_result, is_empty, needs_grad as _needs_grad, odd_kernel

__all__ = ["gated_dwconv", "dffm_out", "sadffm_layer"]

_T = torch.Tensor

_ROW_GUARD = 32  # zeros before and after U in the cpu stash (kRowGuard of csrc/cpu/sadffm_dwconv.h)


def _gated_stash_fake(x: _T, w_in: _T, *rest) -> _T:
    """The CPU backend's stash: U = W_in x + b_in (N, 2*hid, H, W) between two guards of zeros."""
    return x.new_empty(x.shape[0] * w_in.shape[0] * x.shape[2] * x.shape[3] + 2 * _ROW_GUARD)


_gated_dwconv_op, _ = register(OpSpec(
    "gated_dwconv", ("x", "w_in", "b_in", "w_dw", "b_dw"), (), ("h",),
    fake=lambda x, w_in, *rest: x.new_empty(x.shape[0], w_in.shape[0] // 2, *x.shape[2:]),
    stash=_gated_stash_fake))

_DFFM_W = ("w_out", "b_out", "ln_w", "ln_b", "w_gr", "b_gr", "w_lr", "b_lr", "w_ce", "b_ce", "w_se", "b_se")


def _dffm_stash_numel(N: int, C: int, R: int, HW: int) -> int:
    """Elements of the CPU backend's dffm_out stash: per image y (C), lpre (R), mu, rstd, a_loc planes of HW pixels,
    then C sums (dffm_stash_numel of csrc/cpu/sadffm_dffm.h)."""
    return N * ((C + R + 3) * HW + C)


def _dffm_stash_fake(h: _T, w_out: _T, b_out: _T, ln_w: _T, ln_b: _T, w_gr: _T, *rest) -> _T:
    """The CPU backend's stash of dffm_out (see _dffm_stash_numel)."""
    return h.new_empty(_dffm_stash_numel(h.shape[0], w_out.shape[0], w_gr.shape[0], h.shape[2] * h.shape[3]))


_dffm_out_op, _ = register(OpSpec(
    "dffm_out", ("h",) + _DFFM_W, (("eps", "float"),), ("out",),
    fake=lambda h, w_out, *rest: h.new_empty(h.shape[0], w_out.shape[0], *h.shape[2:]),
    stash=_dffm_stash_fake))




def _sadffm_stash_fake(x: _T, w_in: _T, b_in: _T, w_dw: _T, b_dw: _T, w_out: _T, b_out: _T, ln_w: _T, ln_b: _T,
                       w_gr: _T, *rest) -> _T:
    """The CPU backend's whole-layer stash: h in the GEMM's packed panel layout (panels of two 32-byte vectors of
    pixels: 16 floats / 8 doubles), the gated_dwconv stash, then the dffm_out stash."""
    N, hid, HW = x.shape[0], w_in.shape[0] // 2, x.shape[2] * x.shape[3]
    nr = 64 // x.element_size()
    panels = N * hid * ((HW + nr - 1) // nr) * nr
    gated = _gated_stash_fake(x, w_in).shape[0]
    return x.new_empty(panels + gated + _dffm_stash_numel(N, w_out.shape[0], w_gr.shape[0], HW))


# Whole layer, for backends whose table has it (cpu): with a gradient needed (keep) h is passed between the two halves
# only inside the stash, in the packed layout their GEMMs read in place; without, the backend's forward-only kernel
# runs (``infer``: h never held in memory on large inputs). Other backends run the two ops in turn.
_sadffm_op, _ = register(OpSpec(
    "sadffm", ("x", "w_in", "b_in", "w_dw", "b_dw") + _DFFM_W, (("eps", "float"),), ("out",),
    fake=lambda x, w_in, b_in, w_dw, b_dw, w_out, *rest: x.new_empty(x.shape[0], w_out.shape[0], *x.shape[2:]),
    stash=_sadffm_stash_fake))


def _check_gated_weights(x: _T, w_in: _T, b_in: _T, w_dw: _T, b_dw: _T) -> None:
    C = x.shape[1]
    check_weight("w_in", w_in, (None, C, 1, 1), x)
    if w_in.shape[0] % 2:
        raise ValueError(f"w_in must have an even number of output channels (2*hidden), got {w_in.shape[0]}")
    two_h = w_in.shape[0]
    check_weight("b_in", b_in, (two_h,), x)
    check_weight("w_dw", w_dw, (two_h, 1, None, None), x)
    odd_kernel("w_dw", w_dw)
    check_weight("b_dw", b_dw, (two_h,), x)


def _check_dffm_weights(ref: _T, hid: int, w_out: _T, b_out: _T, ln_w: _T, ln_b: _T, w_gr: _T, b_gr: _T,
                        w_lr: _T, b_lr: _T, w_ce: _T, b_ce: _T, w_se: _T, b_se: _T) -> None:
    check_weight("w_out", w_out, (None, hid, 1, 1), ref)
    C = w_out.shape[0]
    check_weight("b_out", b_out, (C,), ref)
    check_weight("ln_w", ln_w, (C,), ref)
    check_weight("ln_b", ln_b, (C,), ref)
    check_weight("w_gr", w_gr, (None, C, 1, 1), ref)
    R = w_gr.shape[0]
    check_weight("b_gr", b_gr, (R,), ref)
    check_weight("w_lr", w_lr, (R, C, 1, 1), ref)
    check_weight("b_lr", b_lr, (R,), ref)
    check_weight("w_ce", w_ce, (C, R, 1, 1), ref)
    check_weight("b_ce", b_ce, (C,), ref)
    check_weight("w_se", w_se, (1, 2 * R, 1, 1), ref)
    check_weight("b_se", b_se, (1,), ref)


def gated_dwconv(x: _T, w_in: _T, b_in: _T, w_dw: _T, b_dw: _T, backend: str = "auto") -> _T:
    """Fused SADFFM front. x: (N, C, H, W) -> h: (N, hid, H, W).

    t = DW_K(W_in x + b_in) with w_in: (2*hid, C, 1, 1), w_dw: (2*hid, 1, K, K) odd K, 'same' padding;
    h = GELU(t[:, :hid]) * t[:, hid:] (exact erf GELU).
    """
    check_image("x", x)
    _check_gated_weights(x, w_in, b_in, w_dw, b_dw)
    backend = resolve_backend(backend, x)
    if is_empty(x):
        return empty_result((x.shape[0], w_in.shape[0] // 2, *x.shape[2:]), x, w_in, b_in, w_dw, b_dw)
    if backend == "reference":
        return reference.gated_dwconv(x, w_in, b_in, w_dw, b_dw)
    # keep: the backend may save forward intermediates for the backward (cpu: U = W_in x + b_in, so its backward
    # skips that GEMM) when a gradient will be needed.
    ts = (x, w_in, b_in, w_dw, b_dw)
    return _gated_dwconv_op(*(t.contiguous() for t in ts), _needs_grad(*ts), backend)[0]


def dffm_out(h: _T, w_out: _T, b_out: _T, ln_w: _T, ln_b: _T, w_gr: _T, b_gr: _T, w_lr: _T, b_lr: _T,
             w_ce: _T, b_ce: _T, w_se: _T, b_se: _T, eps: float = 1e-6, backend: str = "auto") -> _T:
    """Fused SADFFM back. h: (N, hid, H, W) -> (N, C, H, W).

    y = W_out h + b_out (w_out: (C, hid, 1, 1)); z = channel LayerNorm(y) (ln_w, ln_b: (C,), eps);
    g = GELU(W_gr mean_HW(z) + b_gr) (w_gr: (R, C, 1, 1)); l = GELU(W_lr z + b_lr) (w_lr: (R, C, 1, 1));
    c = sigmoid(W_ce g + b_ce) (w_ce: (C, R, 1, 1)); s = sigmoid(W_se [l; g] + b_se) (w_se: (1, 2R, 1, 1));
    returns y * c * s.
    """
    check_image("h", h)
    _check_dffm_weights(h, h.shape[1], w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se)
    backend = resolve_backend(backend, h)
    ws = (w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se)
    if is_empty(h):
        return empty_result((h.shape[0], w_out.shape[0], *h.shape[2:]), h, *ws)
    if backend == "reference":
        return reference.dffm_out(h, *ws, eps)
    # keep: the backend may save forward intermediates for the backward (cpu: y and the LayerNorm statistics,
    # so its backward does not recompute y = W_out h) when a gradient will be needed.
    return _dffm_out_op(h.contiguous(), *(w.contiguous() for w in ws), float(eps), _needs_grad(h, *ws), backend)[0]


def sadffm_layer(x: _T, w_in: _T, b_in: _T, w_dw: _T, b_dw: _T, w_out: _T, b_out: _T, ln_w: _T, ln_b: _T,
                 w_gr: _T, b_gr: _T, w_lr: _T, b_lr: _T, w_ce: _T, b_ce: _T, w_se: _T, b_se: _T, eps: float = 1e-6,
                 backend: str = "auto") -> _T:
    """Whole SADFFM layer: ``dffm_out(gated_dwconv(x, w_in, b_in, w_dw, b_dw), w_out, ..., b_se, eps)``.
    x: (N, C, H, W) -> (N, C_out, H, W); weights as in :func:`gated_dwconv` and :func:`dffm_out`.

    With a gradient needed and the cpu backend, one autograd op (``eimn_kernels::sadffm``) runs the same two
    kernels, passing h between them in the GEMM's packed layout inside its stash. When no gradient is needed (grad
    mode off, or no tensor requires grad) and the backend has a whole-layer kernel (cpu), that kernel runs: for a
    hidden tensor h (N, hid, H, W) of 8 MiB or more (environment variable EIMN_SADFFM_FUSED_MIN_BYTES) h is never
    held in memory (3-4% faster than the two kernels at 4x64x64x64, 4% slower at 1x64x180x320, for the memory);
    below, the two kernels pass h in the GEMM's packed layout. Otherwise this is exactly the two differentiable ops;
    every path gives the same values up to rounding.
    """
    ts = (x, w_in, b_in, w_dw, b_dw, w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se)
    check_image("x", x)
    backend = resolve_backend(backend, x)
    if is_empty(x):
        _check_gated_weights(x, w_in, b_in, w_dw, b_dw)
        _check_dffm_weights(x, w_in.shape[0] // 2, *ts[5:])
        return empty_result((x.shape[0], w_out.shape[0], *x.shape[2:]), *ts)
    if backend != "reference" and op_kernels(backend, "sadffm") is not None:
        # Same validation as the two ops (clear errors), then the whole-layer op.
        _check_gated_weights(x, w_in, b_in, w_dw, b_dw)
        _check_dffm_weights(x, w_in.shape[0] // 2, *ts[5:])
        return _sadffm_op(*(t.contiguous() for t in ts), float(eps), _needs_grad(*ts), backend)[0]
    h = gated_dwconv(x, w_in, b_in, w_dw, b_dw, backend=backend)
    return dffm_out(h, *ts[5:], eps, backend=backend)
