"""Triton backend of conv1x1: a 1x1 convolution with its epilogue fused,
``out = act(W x + b) [* gate] [+ residual]`` (act 0 identity, 1 exact GELU), forward and backward.

Each function takes the arguments of the eimn_C schema of the same name (csrc/eimn_ops.cpp), in that order;
tensors contiguous NCHW of one dtype (float32, float16, bfloat16, float64) and device (CUDA, or CPU under
TRITON_INTERPRET=1); an empty gate / residual is absent. Dots: fp16 / bf16 operands as they are, fp32 in the MOLRCM
kernels' precision (tf32x3: tensor cores, ~1e-6), fp64 exact; accumulation fp32 (fp64 for fp64). Backward: W x + b
recomputed where the epilogue needs it, the gradient of the pre-activation by an elementwise kernel, then the weight
gradient (deterministic partials, sadffm_common.wgrad) and W^T dz (sadffm_common.conv1x1).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import molrcm_config as mcfg
from . import sadffm_config as cfg
from .sadffm_common import acc_dtype, conv1x1 as _conv1x1, gelu, gelu_grad, gemm_tile, raw_dot, tl_dtype, wgrad

__all__ = ["conv1x1_forward", "conv1x1_backward"]


@triton.jit
def conv1x1_act_kernel(X, Wt, B, G, R, Y, CIN, COUT, P,
                       ACT: tl.constexpr, HAS_G: tl.constexpr, HAS_R: tl.constexpr, ACC: tl.constexpr,
                       DOT: tl.constexpr, PREC: tl.constexpr, BO: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr):
    """Y[n, o, p] = act(sum_c Wt[o, c] X[n, c, p] + B[o]) (* G[n, o, p]) (+ R[n, o, p]). X: (N, CIN, P),
    Wt: (COUT, CIN), Y, G, R: (N, COUT, P). Grid (cdiv(P, BP), cdiv(COUT, BO), N)."""
    acc, n, offs_o, offs_p, mo, mp = gemm_tile(X, Wt, CIN, COUT, P, CIN, 1, ACC, DOT, PREC, BO, BC, BP)
    acc += tl.load(B + offs_o, mask=mo, other=0.0).to(ACC)[:, None]
    if ACT == 1:
        acc = gelu(acc)
    m = mo[:, None] & mp[None, :]
    at = n * COUT * P + offs_o[:, None] * P + offs_p[None, :]
    if HAS_G:
        acc = acc * tl.load(G + at, mask=m, other=0.0).to(ACC)
    if HAS_R:
        acc += tl.load(R + at, mask=m, other=0.0).to(ACC)
    tl.store(Y + at, acc, mask=m)


@triton.jit
def conv1x1_dz_kernel(GO, Z, B, G, DZ, DG, COUT, P, TOTAL,
                      ACT: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Elementwise over the (N, COUT, P) output: z = Z + B[o]; DZ = GO (* G) * act'(z); DG = GO * act(z)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < TOTAL
    o = (offs // P) % COUT
    go = tl.load(GO + offs, mask=m, other=0.0).to(ACC)
    z = tl.load(Z + offs, mask=m, other=0.0).to(ACC) + tl.load(B + o, mask=m, other=0.0).to(ACC)
    if ACT == 1:
        d = go * gelu_grad(z)
        a = gelu(z)
    else:
        d = go
        a = z
    if HAS_G:
        tl.store(DG + offs, go * a, mask=m)
        d = d * tl.load(G + offs, mask=m, other=0.0).to(ACC)
    tl.store(DZ + offs, d, mask=m)


def fwd_warps(dt: torch.dtype) -> int:
    """Warps of the forward kernel: 8 for fp32 / fp64 (the 3xTF32 dot's operands at 4 warps needed 255 registers
    and spilled: benchmarks/gpu_static.py), 4 for the half types."""
    return 4 if dt in (torch.float16, torch.bfloat16) else 8


def _dot(dt: torch.dtype):
    """(DOT dtype, input_precision) for operands read from ``dt`` tensors."""
    if dt == torch.float32:
        return tl.float32, mcfg.FP32_DOT_PRECISION
    return raw_dot(dt)


def _computed_dot(dt: torch.dtype):
    """(DOT dtype, precision) where one operand was computed in the accumulation dtype."""
    if dt == torch.float64:
        return tl.float64, "ieee"
    return tl.float32, mcfg.FP32_DOT_PRECISION if dt == torch.float32 else "tf32"


def _check(op: str, x, w, b, gate, residual) -> tuple[int, int]:
    if x.dim() != 4 or w.dim() != 4 or w.shape[1:] != (x.shape[1], 1, 1) or b.shape != (w.shape[0],):
        raise ValueError(f"{op}: x (N, C, H, W), w (Co, C, 1, 1), b (Co,) expected, got {tuple(x.shape)}, "
                         f"{tuple(w.shape)}, {tuple(b.shape)}")
    out = (x.shape[0], w.shape[0], *x.shape[2:])
    for name, t in (("gate", gate), ("residual", residual)):
        if t.numel() and tuple(t.shape) != out:
            raise ValueError(f"{op}: {name} must be {out} or empty, got {tuple(t.shape)}")
    for name, t in (("w", w), ("b", b), ("gate", gate), ("residual", residual)):
        if t.numel() and (t.dtype != x.dtype or t.device != x.device):
            raise TypeError(f"{op}: {name} must have x's dtype and device")
    return w.shape[0], x.shape[2] * x.shape[3]


def _launch_fwd(x, w2, b, gate, residual, act: int, out, dot):
    N, cin = x.shape[:2]
    cout, P = w2.shape[0], x.shape[2] * x.shape[3]
    grid = (triton.cdiv(P, cfg.GEMM_BP), triton.cdiv(cout, cfg.GEMM_BO), N)
    conv1x1_act_kernel[grid](x, w2, b, gate if gate.numel() else out, residual if residual.numel() else out, out,
                             cin, cout, P, ACT=int(act), HAS_G=gate.numel() > 0, HAS_R=residual.numel() > 0,
                             ACC=tl_dtype(acc_dtype(x.dtype)), DOT=dot[0], PREC=dot[1],
                             BO=cfg.GEMM_BO, BC=cfg.GEMM_BC, BP=cfg.GEMM_BP, num_warps=fwd_warps(x.dtype))
    return out


def conv1x1_forward(x, w, b, gate, residual, act):
    """x: (N, C, H, W), w: (Co, C, 1, 1), b: (Co,), gate / residual: (N, Co, H, W) or empty, act 0 / 1
    -> act(W x + b) [* gate] [+ residual]: (N, Co, H, W), x's dtype."""
    cout, _ = _check("conv1x1_forward", x, w, b, gate, residual)
    out = torch.empty(x.shape[0], cout, *x.shape[2:], device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    return _launch_fwd(x, w.reshape(cout, -1), b, gate, residual, act, out, _dot(x.dtype))


def conv1x1_backward(grad_out, x, w, b, gate, residual, act):
    """grad_out: (N, Co, H, W), the rest as the forward -> (grad_x, grad_w, grad_b, grad_gate, grad_residual);
    the gradients of an absent gate / residual are empty."""
    cout, P = _check("conv1x1_backward", x, w, b, gate, residual)
    acc = acc_dtype(x.dtype)
    w2 = w.reshape(cout, -1)
    go = grad_out.contiguous()
    has_g = gate.numel() > 0
    dgate = torch.empty_like(gate) if has_g else gate.new_empty(0)
    if act == 1 or has_g:
        z = torch.empty(go.shape, device=x.device, dtype=acc)  # W x (the bias is added in the dz kernel)
        _conv1x1(x, w2, None, z, _dot(x.dtype))
        dz = torch.empty_like(z)
        dg = torch.empty(go.shape, device=x.device, dtype=acc) if has_g else dz
        total = go.numel()
        grid = (triton.cdiv(total, 1024),)
        conv1x1_dz_kernel[grid](go, z, b, gate if has_g else go, dz, dg, cout, P, total, ACT=int(act), HAS_G=has_g,
                                ACC=tl_dtype(acc), BLOCK=1024)
        if has_g:
            dgate.copy_(dg)
        del z, dg
    else:
        dz = go
    dw, db = wgrad(dz, x, True, acc, _computed_dot(x.dtype))
    dx = torch.empty_like(x)
    _conv1x1(dz, w2.t(), None, dx, _computed_dot(x.dtype))
    dres = go.clone() if residual.numel() else residual.new_empty(0)
    return dx, dw.to(w.dtype).view_as(w), db.to(b.dtype), dgate, dres
