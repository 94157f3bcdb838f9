"""Roofline numbers of an op: FLOPs of its convolutions and the fewest bytes it must move.

FLOPs are 2 x the multiply-accumulates of every aten.convolution (forward) and aten.convolution_backward
(grad of input and of weight, as requested) the eager reference runs, counted on meta tensors (nothing
computed). Elementwise work (GELU, SiLU, LayerNorm, products) is not counted: it is small next to the
convolutions and these layers are bandwidth-bound anyway. Minimum bytes: every input and parameter read once
and every output written once (backward: grad outputs and the saved inputs read, every gradient written).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

__all__ = ["ConvFlopCounter", "conv_flops", "nbytes", "roofline_fields"]

_aten = torch.ops.aten


def _conv_macs(out_shape, weight: torch.Tensor) -> int:
    # out (N, Cout, *spatial); weight (Cout, Cin/groups, *k): MACs = out elements x Cin/groups x prod(k)
    n = 1
    for s in out_shape:
        n *= int(s)
    per = 1
    for s in weight.shape[1:]:
        per *= int(s)
    return n * per


class ConvFlopCounter(TorchDispatchMode):
    """Counts 2 x MACs of convolutions (forward and backward) dispatched inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = getattr(func, "overloadpacket", None)
        if packet is _aten.convolution:
            w = args[1]
            transposed = bool(args[6]) if len(args) > 6 else False
            if not transposed:
                self.flops += 2 * _conv_macs(out.shape, w)
        elif packet is _aten.convolution_backward:
            grad_out, w = args[0], args[2]
            mask = args[-1] if len(args) >= 11 else kwargs.get("output_mask", (True, True, True))
            macs = _conv_macs(grad_out.shape, w)
            self.flops += 2 * macs * (int(bool(mask[0])) + int(bool(mask[1])))
        return out


def _to_meta(x):
    if torch.is_tensor(x):
        m = torch.empty(x.shape, dtype=x.dtype, device="meta")
        return m.requires_grad_(x.requires_grad) if x.is_floating_point() else m
    return x


def conv_flops(fn: Callable, *args, backward: bool = False) -> dict:
    """Convolution FLOPs of ``fn(*args)`` (forward) and, when ``backward``, of the gradient of every
    tensor argument that requires grad. Arguments are replaced by meta tensors of the same shape."""
    margs = tree_map(_to_meta, list(args))
    with ConvFlopCounter() as c:
        out = fn(*margs)
    res = {"fwd": c.flops}
    if backward:
        outs = [out] if torch.is_tensor(out) else list(out)
        wrt = [a for a in margs if torch.is_tensor(a) and a.requires_grad]
        with ConvFlopCounter() as cb:
            torch.autograd.grad(outs, wrt, [torch.empty_like(o) for o in outs], allow_unused=True)
        res["bwd"] = cb.flops
    return res


def nbytes(*tensors) -> int:
    """Sum of the sizes in bytes of the tensors among ``tensors`` (nested lists and tuples allowed)."""
    total = 0
    for t in tensors:
        if torch.is_tensor(t):
            total += t.numel() * t.element_size()
        elif isinstance(t, (list, tuple)):
            total += nbytes(*t)
    return total


def roofline_fields(flops: int, min_bytes: int, seconds: float, ceilings: dict | None) -> dict:
    """Achieved rates and fractions of the measured ceilings (``copy_GBps``, ``sgemm_GFLOPs``) for one timing."""
    d = {"flops": int(flops), "min_bytes": int(min_bytes), "GFLOPs": flops / seconds / 1e9,
         "GBps": min_bytes / seconds / 1e9}
    if ceilings:
        bw, fl = ceilings.get("copy_GBps"), ceilings.get("gemm_GFLOPs") or ceilings.get("sgemm_GFLOPs")
        if bw and fl:
            floor = max(min_bytes / (bw * 1e9), flops / (fl * 1e9))
            d.update({"bw_frac": d["GBps"] / bw, "flop_frac": d["GFLOPs"] / fl, "roofline_floor_s": floor,
                      "roofline_frac": floor / seconds, "bound": "memory" if min_bytes / bw > flops / fl else "compute"})
    return d
