"""MOLRCM fused ops: spatial mixing (dw_mix), input projections (proj_qv) and gating (gate_out).

Every function takes ``backend`` ('auto', 'reference', 'cpu', 'triton', 'cuda'). Inputs may be
non-contiguous or channels_last: kernel backends get a contiguous NCHW copy.
"""
from __future__ import annotations

import torch

from .. import reference
from ..backends import resolve_backend
from ._registry import OpSpec, register
from .checks import check_image, check_same, check_weight, empty_result, is_empty, odd_kernel

__all__ = ["dw_mix", "proj_qv", "gate_out"]

_T = torch.Tensor

_dw_mix_op, _ = register(OpSpec(
    "dw_mix", ("q", "w0", "b0", "w1", "b1", "w2", "b2"),
    (("c1", "int"), ("c2", "int"), ("d0", "int"), ("d1", "int"), ("d2", "int")), ("y",),
    fake=lambda q, *rest: torch.empty_like(q)))

_proj_qv_op, _ = register(OpSpec(
    "proj_qv", ("x", "wq", "bq", "wv", "bv"), (), ("q", "v"),
    fake=lambda x, wq, bq, wv, bv: (x.new_empty(x.shape[0], wq.shape[0], *x.shape[2:]),
                                    x.new_empty(x.shape[0], wv.shape[0], *x.shape[2:]))))

_gate_out_op, _ = register(OpSpec(
    "gate_out", ("y", "v", "wf", "bf", "wo", "bo"), (), ("out",),
    fake=lambda y, v, wf, bf, wo, bo: y.new_empty(y.shape[0], wo.shape[0], *y.shape[2:])))


def dw_mix(q: _T, w0: _T, b0: _T, w1: _T, b1: _T, w2: _T, b2: _T, c1: int, c2: int,
           d0: int = 1, d1: int = 2, d2: int = 3, backend: str = "auto") -> _T:
    """Fused MOLRCM spatial mixing. q: (N, C, H, W) float -> y: (N, C, H, W), same dtype.

    r = DW_{K0,d0}(q) (w0: (C, 1, K0, K0), b0: (C,)); then
    y = cat(DW_{K1,d1}(r[:, :c1]), r[:, c1:c1+c2], DW_{K2,d2}(r[:, c1+c2:])) with
    w1: (c1, 1, K1, K1), w2: (C-c1-c2, 1, K2, K2). Odd kernels, 'same' zero padding of r.
    """
    check_image("q", q)
    C = q.shape[1]
    if c1 < 0 or c2 < 0 or c1 + c2 > C:
        raise ValueError(f"channel split c1={c1}, c2={c2} does not fit {C} channels")
    c3 = C - c1 - c2
    check_weight("w0", w0, (C, 1, None, None), q)
    check_weight("b0", b0, (C,), q)
    check_weight("w1", w1, (c1, 1, None, None), q)
    check_weight("b1", b1, (c1,), q)
    check_weight("w2", w2, (c3, 1, None, None), q)
    check_weight("b2", b2, (c3,), q)
    for n, w in (("w0", w0), ("w1", w1), ("w2", w2)):
        odd_kernel(n, w)
    for n, d in (("d0", d0), ("d1", d1), ("d2", d2)):
        if int(d) < 1:
            raise ValueError(f"dilation {n} must be >= 1, got {d}")
    backend = resolve_backend(backend, q)
    if is_empty(q):
        return empty_result(tuple(q.shape), q, w0, b0, w1, b1, w2, b2)
    if backend == "reference":
        return reference.dw_mix(q, w0, b0, w1, b1, w2, b2, c1, c2, d0, d1, d2)
    return _dw_mix_op(q.contiguous(), w0.contiguous(), b0.contiguous(), w1.contiguous(), b1.contiguous(),
                      w2.contiguous(), b2.contiguous(), int(c1), int(c2), int(d0), int(d1), int(d2), backend)


def proj_qv(x: _T, wq: _T, bq: _T, wv: _T, bv: _T, backend: str = "auto") -> tuple[_T, _T]:
    """Fused MOLRCM projections. x: (N, C, H, W) -> q = GELU(Wq x + bq): (N, Cq, H, W),
    v = Wv x + bv: (N, Cv, H, W). wq: (Cq, C, 1, 1), wv: (Cv, C, 1, 1). Exact erf GELU."""
    check_image("x", x)
    C = x.shape[1]
    check_weight("wq", wq, (None, C, 1, 1), x)
    check_weight("bq", bq, (wq.shape[0],), x)
    check_weight("wv", wv, (None, C, 1, 1), x)
    check_weight("bv", bv, (wv.shape[0],), x)
    backend = resolve_backend(backend, x)
    if is_empty(x):
        N, _, H, W = x.shape
        return (empty_result((N, wq.shape[0], H, W), x, wq, bq), empty_result((N, wv.shape[0], H, W), x, wv, bv))
    if backend == "reference":
        return reference.proj_qv(x, wq, bq, wv, bv)
    return _proj_qv_op(x.contiguous(), wq.contiguous(), bq.contiguous(), wv.contiguous(),
                       bv.contiguous(), backend)


def gate_out(y: _T, v: _T, wf: _T, bf: _T, wo: _T, bo: _T, backend: str = "auto") -> _T:
    """Fused MOLRCM gating. y, v: (N, C, H, W) -> Wo (SiLU(Wf y + bf) * v) + bo: (N, Co, H, W).
    wf: (C, C, 1, 1), wo: (Co, C, 1, 1)."""
    check_image("y", y)
    check_same("v", v, y, "y")
    C = y.shape[1]
    check_weight("wf", wf, (C, C, 1, 1), y)
    check_weight("bf", bf, (C,), y)
    check_weight("wo", wo, (None, C, 1, 1), y)
    check_weight("bo", bo, (wo.shape[0],), y)
    backend = resolve_backend(backend, y)
    if is_empty(y):
        return empty_result((y.shape[0], wo.shape[0], *y.shape[2:]), y, v, wf, bf, wo, bo)
    if backend == "reference":
        return reference.gate_out(y, v, wf, bf, wo, bo)
    return _gate_out_op(y.contiguous(), v.contiguous(), wf.contiguous(), bf.contiguous(),
                        wo.contiguous(), bo.contiguous(), backend)
