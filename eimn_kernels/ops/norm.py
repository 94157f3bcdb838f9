"""Channel LayerNorm of an NCHW image (EIMN's LayerNorm between blocks) as a fused op: one read and one write of
the image, instead of ``nn.LayerNorm`` on a permuted view plus the copies that make its result contiguous again."""
from __future__ import annotations

import torch

from .. import reference
from ..backends import op_kernels, resolve_backend
from ._registry import OpSpec, register
from .checks import check_image, check_weight, empty_result, is_empty, needs_grad

__all__ = ["channel_layer_norm"]

_T = torch.Tensor

_cln_op, _ = register(OpSpec(
    "channel_layer_norm", ("x", "w", "b"), (("eps", "float"),), ("y",),
    fake=lambda x, *rest: x.new_empty(x.shape),
    # The CPU backend's stash: mean and rstd per pixel (N x H x W each).
    stash=lambda x, *rest: x.new_empty(2 * x.shape[0] * x.shape[2] * x.shape[3])))


def channel_layer_norm(x: _T, weight: _T, bias: _T, eps: float = 1e-5, backend: str = "auto") -> _T:
    """LayerNorm over the channels of every pixel. x: (N, C, H, W) float; weight, bias: (C,) of x's dtype
    -> (N, C, H, W), x's dtype (contiguous from the kernel backends; the reference returns the permuted view, as
    the model computes it): ``(x - mean_C x) / sqrt(var_C x + eps) * weight + bias`` (biased
    variance), the same as ``nn.LayerNorm(C)`` applied to ``x.permute(0, 2, 3, 1)`` and permuted back.

    Backends: ``cpu`` (C++), ``triton``; ``cuda`` has no C++ kernel for this op and runs the Triton kernel when
    Triton is installed, else the reference. Any memory layout of x is accepted (made contiguous first).
    """
    check_image("x", x)
    C = x.shape[1]
    check_weight("weight", weight, (C,), x)
    check_weight("bias", bias, (C,), x)
    backend = resolve_backend(backend, x)
    if is_empty(x):
        return empty_result(tuple(x.shape), x, weight, bias)
    if backend != "reference" and op_kernels(backend, "channel_layer_norm") is None:
        backend = "reference"  # cuda without Triton (the cuda backend runs this op's Triton kernel: backends/cuda.py)
    if backend == "reference":
        return reference.channel_layer_norm(x, weight, bias, eps)
    return _cln_op(x.contiguous(), weight.contiguous(), bias.contiguous(), float(eps), needs_grad(x, weight, bias),
                   backend)[0]
