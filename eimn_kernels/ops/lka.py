"""Large-kernel attention (VAN's LKA and its descendants) from two fused ops: ``dw_mix`` (the chain of depthwise
convolutions, the first one's output never written) and ``conv1x1`` (a 1x1 convolution with its epilogue fused:
activation, gate product, residual add).

    lka(x)           = x * conv1(conv_spatial(conv0(x)))                   dw_mix + conv1x1(gate=x)
    lka_attention(x) = proj_2(lka(GELU(proj_1(x)))) + x                    conv1x1(gelu), dw_mix, conv1x1(gate),
                                                                           conv1x1(residual)
"""
from __future__ import annotations

import torch

from .. import reference
from ..backends import op_kernels, resolve_backend
from ._registry import OpSpec, register
from .checks import check_image, check_weight, empty_result, is_empty, odd_kernel
from .molrcm import dw_mix

__all__ = ["conv1x1", "lka", "lka_attention", "cpu_direct", "lka_cpu", "lka_attention_cpu", "ACTIVATIONS"]

_T = torch.Tensor
ACTIVATIONS = {"none": 0, "gelu": 1}

_conv1x1_op, _ = register(OpSpec(
    "conv1x1", ("x", "w", "b", "gate", "residual"), (("act", "int"),), ("out",),
    fake=lambda x, w, *rest: x.new_empty(x.shape[0], w.shape[0], *x.shape[2:])))


def conv1x1(x: _T, w: _T, b: _T, act: str = "none", gate: _T | None = None, residual: _T | None = None,
            backend: str = "auto") -> _T:
    """1x1 convolution with its epilogue: ``act(W x + b) [* gate] [+ residual]``.

    x: (N, C, H, W) float; w: (Co, C, 1, 1); b: (Co,); act: 'none' or 'gelu' (exact erf GELU); gate, residual:
    (N, Co, H, W) or None. Returns (N, Co, H, W) in x's dtype. Backends: cpu (C++), triton; cuda runs the Triton
    kernel (the reference where Triton is missing).
    """
    check_image("x", x)
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {tuple(ACTIVATIONS)}, got {act!r}")
    check_weight("w", w, (None, x.shape[1], 1, 1), x)
    check_weight("b", b, (w.shape[0],), x)
    out_shape = (x.shape[0], w.shape[0], *x.shape[2:])
    for name, t in (("gate", gate), ("residual", residual)):
        if t is not None:
            check_weight(name, t, out_shape, x)
    backend = resolve_backend(backend, x)
    present = [t for t in (gate, residual) if t is not None]
    if is_empty(x):
        return empty_result(out_shape, x, w, b, *present)
    if backend != "reference" and op_kernels(backend, "conv1x1") is None:
        backend = "reference"  # cuda without Triton (the cuda backend runs this op's Triton kernel)
    if backend == "reference":
        return reference.conv1x1(x, w, b, gate, residual, ACTIVATIONS[act])
    none = x.new_empty(0)
    return _conv1x1_op(x.contiguous(), w.contiguous(), b.contiguous(),
                       none if gate is None else gate.contiguous(), none if residual is None else residual.contiguous(),
                       ACTIVATIONS[act], backend)


def _dw_chain(x: _T, w0: _T, b0: _T, w_sp: _T, b_sp: _T, dilation: int, backend: str) -> _T:
    """conv_spatial(conv0(x)): the depthwise K0 conv, then the depthwise K1 conv with ``dilation`` on all channels
    (dw_mix with no channel split), the first one's output never written."""
    none_w, none_b = w0.new_empty(0, 1, 1, 1), b0.new_empty(0)
    return dw_mix(x, w0, b0, none_w, none_b, w_sp, b_sp, 0, 0, d0=1, d1=1, d2=int(dilation), backend=backend)


def cpu_direct(backend: str, x: _T, *tensors: _T) -> bool:
    """Whether the CPU C++ kernels may be called straight, sparing the custom ops' dispatch (~30-50 us a call,
    most of the time of a block at VAN's 7x7 stage): ``backend`` resolved to cpu (the kernels are loaded), a plain
    tensor x (no subclass such as a fake tensor), nothing of x and ``tensors`` to differentiate, not being traced by
    torch.compile (the eimn_C kernels have no fake impls)."""
    return (backend == "cpu" and type(x) is torch.Tensor and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *tensors))))


def lka_cpu(x: _T, w0: _T, b0: _T, w_sp: _T, b_sp: _T, w1: _T, b1: _T, dilation: int) -> _T:
    """:func:`lka` as two calls of the CPU C++ kernels, without autograd (the kernels check their inputs)."""
    E = torch.ops.eimn_C
    none, none_w = x.new_empty(0), x.new_empty(0, 1, 1, 1)
    r = E.dw_mix_forward(x, w0, b0, none_w, none, w_sp, b_sp, 0, 0, 1, 1, int(dilation))  # conv_spatial(conv0 x)
    return E.conv1x1_forward(r, w1, b1, x, none, 0)                                       # x * conv1(r)


def lka_attention_cpu(x: _T, w_p1: _T, b_p1: _T, w0: _T, b0: _T, w_sp: _T, b_sp: _T, w1: _T, b1: _T, w_p2: _T,
                      b_p2: _T, dilation: int, residual: _T) -> _T:
    """:func:`lka_attention` as four calls of the CPU C++ kernels, without autograd, the residual given:
    ``proj_2(lka(GELU(proj_1(x)))) + residual``. CPU float32 / float64 tensors (the kernels check their inputs)."""
    E, none = torch.ops.eimn_C, x.new_empty(0)
    u = E.conv1x1_forward(x, w_p1, b_p1, none, none, 1)  # GELU(proj_1 x)
    a = lka_cpu(u, w0, b0, w_sp, b_sp, w1, b1, dilation)
    return E.conv1x1_forward(a, w_p2, b_p2, none, residual, 0)


def lka(x: _T, w0: _T, b0: _T, w_sp: _T, b_sp: _T, w1: _T, b1: _T, dilation: int = 3, backend: str = "auto") -> _T:
    """VAN's Large Kernel Attention: ``x * conv1(conv_spatial(conv0(x)))``.

    x: (N, C, H, W); w0: (C, 1, K0, K0) depthwise (odd K0); w_sp: (C, 1, K1, K1) depthwise with ``dilation``;
    w1: (C, C, 1, 1); biases (C,). 'same' zero padding throughout. -> (N, C, H, W).
    """
    check_image("x", x)
    for n, w in (("w0", w0), ("w_sp", w_sp)):
        odd_kernel(n, w)
    check_weight("w1", w1, (x.shape[1], x.shape[1], 1, 1), x)
    backend = resolve_backend(backend, x)
    if cpu_direct(backend, x, w0, b0, w_sp, b_sp, w1, b1) and not is_empty(x):
        return lka_cpu(x, w0, b0, w_sp, b_sp, w1, b1, dilation)
    r = _dw_chain(x, w0, b0, w_sp, b_sp, dilation, backend)
    return conv1x1(r, w1, b1, gate=x, backend=backend)


def lka_attention(x: _T, w_p1: _T, b_p1: _T, w0: _T, b0: _T, w_sp: _T, b_sp: _T, w1: _T, b1: _T, w_p2: _T,
                  b_p2: _T, dilation: int = 3, backend: str = "auto") -> _T:
    """VAN's attention block: ``proj_2(lka(GELU(proj_1(x)))) + x``; proj_1, proj_2: (C, C, 1, 1) 1x1 convs,
    the LKA weights as in :func:`lka`. x: (N, C, H, W) -> (N, C, H, W)."""
    check_image("x", x)
    backend = resolve_backend(backend, x)
    ws = (w_p1, b_p1, w0, b0, w_sp, b_sp, w1, b1, w_p2, b_p2)
    if cpu_direct(backend, x, *ws) and not is_empty(x):
        for n, w in (("w0", w0), ("w_sp", w_sp)):
            odd_kernel(n, w)
        return lka_attention_cpu(x, *ws, dilation, x)
    u = conv1x1(x, w_p1, b_p1, act="gelu", backend=backend)
    a = lka(u, w0, b0, w_sp, b_sp, w1, b1, dilation, backend=backend)
    return conv1x1(a, w_p2, b_p2, residual=x, backend=backend)
