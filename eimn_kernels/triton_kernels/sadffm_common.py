"""Shared pieces of the SADFFM Triton kernels: scalar math, dtype plumbing, and two generic kernels
(1x1 convolution as a GEMM, deterministic weight-gradient GEMM with per-program partials)."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import sadffm_config as cfg

_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
       torch.float64: tl.float64}


def acc_dtype(dt: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dt == torch.float64 else torch.float32


def tl_dtype(dt: torch.dtype):
    if dt not in _TL:
        raise TypeError(f"triton SADFFM kernels support float32/float16/bfloat16/float64, got {dt}")
    return _TL[dt]


def raw_dot(dt: torch.dtype):
    """(DOT dtype, input_precision) for tl.dot on operands read straight from input-dtype tensors.
    The Triton 3.9 interpreter multiplies bfloat16 dot operands wrongly (it sees raw bits), so under
    TRITON_INTERPRET=1 bfloat16 operands are widened to fp32 first (on a GPU they stay bf16)."""
    if dt == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
        return tl.float32, "ieee"
    return tl_dtype(dt), "ieee"


def computed_dot(dt: torch.dtype):
    """(DOT dtype, input_precision) for tl.dot where one operand was computed in the accumulator dtype:
    fp64 -> fp64, fp32 -> exact fp32 ("ieee", keeps 1e-5 accuracy), fp16/bf16 -> tf32 (10-bit mantissa
    like fp16, without rounding the fp32 intermediate to half)."""
    if dt == torch.float64:
        return tl.float64, "ieee"
    if dt == torch.float32:
        return tl.float32, "ieee"
    return tl.float32, "tf32"


def splits(n_items: int) -> tuple[int, int]:
    """(number of partial-sum programs S, work items per program) for a deterministic reduction."""
    per = triton.cdiv(n_items, min(n_items, cfg.MAX_SPLITS))
    return triton.cdiv(n_items, per), per


@triton.jit
def gelu(x):
    """Exact erf GELU."""
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def gelu_grad(x):
    """d/dx of exact GELU: Phi(x) + x * phi(x)."""
    cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
    return cdf + x * tl.exp(-0.5 * x * x) * 0.3989422804014327


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def gemm_tile(X, Wt, CIN, COUT, P, sw_o, sw_c, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
              BO: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr):
    """This program's [BO, BP] tile of a 1x1 convolution, sum_c Wt[o, c] X[n, c, p] in the accumulation dtype
    (Wt element (o, c) at o*sw_o + c*sw_c; X: (N, CIN, P); grid (cdiv(P, BP), cdiv(COUT, BO), N)), masked rows
    and columns zero. Returns (acc, n, offs_o, offs_p, mo, mp)."""
    n = tl.program_id(2).to(tl.int64)
    offs_p = tl.program_id(0) * BP + tl.arange(0, BP)
    offs_o = tl.program_id(1) * BO + tl.arange(0, BO)
    mp = offs_p < P
    mo = offs_o < COUT
    xb = X + n * CIN * P
    acc = tl.zeros([BO, BP], dtype=ACC)
    for c0 in range(0, CIN, BC):
        offs_c = c0 + tl.arange(0, BC)
        mc = offs_c < CIN
        w = tl.load(Wt + offs_o[:, None] * sw_o + offs_c[None, :] * sw_c, mask=mo[:, None] & mc[None, :], other=0.0)
        x = tl.load(xb + offs_c[:, None] * P + offs_p[None, :], mask=mc[:, None] & mp[None, :], other=0.0)
        acc = tl.dot(w.to(DOT), x.to(DOT), acc, input_precision=PREC, out_dtype=ACC)
    return acc, n, offs_o, offs_p, mo, mp


@triton.jit
def conv1x1_kernel(X, Wt, B, Y, CIN, COUT, P, sw_o, sw_c,
                   HAS_BIAS: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                   BO: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr):
    """Y[n, o, p] = sum_c Wt[o, c] X[n, c, p] (+ B[o]); Wt element (o, c) at o*sw_o + c*sw_c
    (so a transposed weight is just other strides). X: (N, CIN, P), Y: (N, COUT, P), any float dtypes.
    Grid (cdiv(P, BP), cdiv(COUT, BO), N)."""
    acc, n, offs_o, offs_p, mo, mp = gemm_tile(X, Wt, CIN, COUT, P, sw_o, sw_c, ACC, DOT, PREC, BO, BC, BP)
    if HAS_BIAS:
        acc += tl.load(B + offs_o, mask=mo, other=0.0).to(ACC)[:, None]
    tl.store(Y + n * COUT * P + offs_o[:, None] * P + offs_p[None, :], acc, mask=mo[:, None] & mp[None, :])


@triton.jit
def wgrad_kernel(A, Bm, PW, PB, M, K, P, NT, PER, NITEMS,
                 HAS_B: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                 BM: tl.constexpr, BK: tl.constexpr, BP: tl.constexpr):
    """Partial weight gradient of a 1x1 conv: for split s, PW[s, m, k] = sum A[n, m, p] Bm[n, k, p] and
    PB[s, m] = sum A[n, m, p] over the work items (n, pixel tile) i in [s*PER, (s+1)*PER), i = n*NT + tile.
    A: (N, M, P), Bm: (N, K, P); PW: (S, M, K), PB: (S, M) in the accumulator dtype.
    Grid (S, cdiv(M, BM), cdiv(K, BK)). Summing PW over s afterwards is a fixed-order (deterministic) reduction."""
    s = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_k = pid_k * BK + tl.arange(0, BK)
    mm = offs_m < M
    mk = offs_k < K
    acc = tl.zeros([BM, BK], dtype=ACC)
    accb = tl.zeros([BM], dtype=ACC)
    end = tl.minimum(s * PER + PER, NITEMS)
    for i in range(s * PER, end):
        n = (i // NT).to(tl.int64)
        offs_p = (i % NT) * BP + tl.arange(0, BP)
        mp = offs_p < P
        a = tl.load(A + n * M * P + offs_m[:, None] * P + offs_p[None, :], mask=mm[:, None] & mp[None, :], other=0.0)
        b = tl.load(Bm + n * K * P + offs_k[:, None] * P + offs_p[None, :], mask=mk[:, None] & mp[None, :], other=0.0)
        acc = tl.dot(a.to(DOT), tl.trans(b.to(DOT)), acc, input_precision=PREC, out_dtype=ACC)
        if HAS_B:
            accb += tl.sum(a.to(ACC), axis=1)
    tl.store(PW + s * M * K + offs_m[:, None] * K + offs_k[None, :], acc, mask=mm[:, None] & mk[None, :])
    if HAS_B:
        if pid_k == 0:
            tl.store(PB + s * M + offs_m, accb, mask=mm)


def conv1x1(x: torch.Tensor, w2d: torch.Tensor, bias, out: torch.Tensor, dot) -> torch.Tensor:
    """out (N, COUT, H, W) = w2d (COUT, CIN) applied per pixel to x (N, CIN, H, W) (+ bias); w2d may be a
    transposed view (strides are passed). ``dot`` = (DOT dtype, input_precision)."""
    N, cin = x.shape[:2]
    P = x.shape[2] * x.shape[3]
    cout = w2d.shape[0]
    grid = (triton.cdiv(P, cfg.GEMM_BP), triton.cdiv(cout, cfg.GEMM_BO), N)
    conv1x1_kernel[grid](x, w2d, bias if bias is not None else w2d, out, cin, cout, P,
                         w2d.stride(0), w2d.stride(1), HAS_BIAS=bias is not None,
                         ACC=tl_dtype(acc_dtype(x.dtype)), DOT=dot[0], PREC=dot[1],
                         BO=cfg.GEMM_BO, BC=cfg.GEMM_BC, BP=cfg.GEMM_BP, num_warps=cfg.GEMM_WARPS)
    return out


def wgrad(a: torch.Tensor, b: torch.Tensor, with_bias: bool, acc: torch.dtype, dot):
    """(sum_{n,p} a b^T: (M, K), sum_{n,p} a: (M,) or None) in dtype ``acc``, reduced deterministically.
    a: (N, M, H, W), b: (N, K, H, W)."""
    N, M = a.shape[:2]
    K = b.shape[1]
    P = a.shape[2] * a.shape[3]
    nt = triton.cdiv(P, cfg.WG_BP)
    S, per = splits(N * nt)
    pw = torch.empty(S, M, K, device=a.device, dtype=acc)
    pb = torch.empty(S, M, device=a.device, dtype=acc) if with_bias else pw
    grid = (S, triton.cdiv(M, cfg.WG_BM), triton.cdiv(K, cfg.WG_BK))
    wgrad_kernel[grid](a, b, pw, pb, M, K, P, nt, per, N * nt, HAS_B=with_bias, ACC=tl_dtype(acc),
                       DOT=dot[0], PREC=dot[1], BM=cfg.WG_BM, BK=cfg.WG_BK, BP=cfg.WG_BP,
                       num_warps=cfg.WG_WARPS)
    return pw.sum(0), (pb.sum(0) if with_bias else None)
