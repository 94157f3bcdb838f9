"""Triton kernels of gated_dwconv (SADFFM front): h = GELU(t[:hid]) * t[hid:], t = DW_K(W_in x + b_in) + b_dw.

Forward: u = W_in x + b_in (1x1 GEMM, written once in the input dtype), then one kernel does the KxK
depthwise on both halves and the gate, so t (2*hid channels) is never written.
Backward: u recomputed (accumulator dtype); one kernel recomputes t, writes gt = dL/dt and per-program
partials of the depthwise weight/bias grads; one kernel applies the transposed depthwise (gu = dL/du);
then gx = W_in^T gu (GEMM) and the W_in / b_in grads (deterministic partial GEMM).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import sadffm_config as cfg
from .sadffm_common import (acc_dtype, computed_dot, conv1x1, gelu, gelu_grad, raw_dot, splits, tl_dtype,
                            wgrad)


@triton.jit
def _tap_pair(U, offs_j, mj, offs_p, mp, py, px, HID, H, W, P,
              k: tl.constexpr, K: tl.constexpr, ACC: tl.constexpr):
    """Tap k of a KxK depthwise window: channels j and j+HID of U (one image, (2*HID, P)) at the pixels shifted
    by the tap, zero outside the image. Returns two [BH, BP] blocks."""
    dy = k // K - (K - 1) // 2
    dx = k % K - (K - 1) // 2
    yy = py + dy
    xx = px + dx
    m = mp & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
    q = offs_p + dy * W + dx
    m2 = mj[:, None] & m[None, :]
    u1 = tl.load(U + offs_j[:, None] * P + q[None, :], mask=m2, other=0.0).to(ACC)
    u2 = tl.load(U + (offs_j + HID)[:, None] * P + q[None, :], mask=m2, other=0.0).to(ACC)
    return u1, u2


@triton.jit
def _dw_pair(U, Wdw, offs_j, mj, offs_p, mp, py, px, HID, H, W, P,
             K: tl.constexpr, ACC: tl.constexpr, BH: tl.constexpr, BP: tl.constexpr):
    """Depthwise KxK ('same' zero padding, no bias) of channels j and j+HID of U (one image, (2*HID, P))."""
    t1 = tl.zeros([BH, BP], dtype=ACC)
    t2 = tl.zeros([BH, BP], dtype=ACC)
    for k in tl.static_range(K * K):
        u1, u2 = _tap_pair(U, offs_j, mj, offs_p, mp, py, px, HID, H, W, P, k, K, ACC)
        w1 = tl.load(Wdw + offs_j * (K * K) + k, mask=mj, other=0.0).to(ACC)
        w2 = tl.load(Wdw + (offs_j + HID) * (K * K) + k, mask=mj, other=0.0).to(ACC)
        t1 += w1[:, None] * u1
        t2 += w2[:, None] * u2
    return t1, t2


@triton.jit
def gated_dw_fwd_kernel(U, Wdw, Bdw, Hout, HID, H, W,
                        K: tl.constexpr, ACC: tl.constexpr, BH: tl.constexpr, BP: tl.constexpr):
    """U: (N, 2*HID, H, W) = W_in x + b_in; Hout: (N, HID, H, W). Grid (cdiv(H*W, BP), cdiv(HID, BH), N)."""
    pid_p = tl.program_id(0)
    pid_j = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    P = H * W
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_j = pid_j * BH + tl.arange(0, BH)
    mp = offs_p < P
    mj = offs_j < HID
    py = offs_p // W
    px = offs_p % W
    t1, t2 = _dw_pair(U + n * 2 * HID * P, Wdw, offs_j, mj, offs_p, mp, py, px, HID, H, W, P, K, ACC, BH, BP)
    t1 += tl.load(Bdw + offs_j, mask=mj, other=0.0).to(ACC)[:, None]
    t2 += tl.load(Bdw + HID + offs_j, mask=mj, other=0.0).to(ACC)[:, None]
    h = gelu(t1) * t2
    tl.store(Hout + n * HID * P + offs_j[:, None] * P + offs_p[None, :], h, mask=mj[:, None] & mp[None, :])


@triton.jit
def gated_dw_bwd_kernel(GH, U, Wdw, Bdw, GT, PW, PB, HID, H, W, NT, PER, NITEMS,
                        K: tl.constexpr, KKP: tl.constexpr, ACC: tl.constexpr, BH: tl.constexpr, BP: tl.constexpr):
    """Given GH = dL/dh (N, HID, H, W) and U (N, 2*HID, H, W): writes GT = dL/dt (N, 2*HID, H, W) and, for
    split s over work items i = n*NT + tile in [s*PER, (s+1)*PER), partials PW[s, c, k] = sum GT*U(shifted)
    (c < 2*HID, k < K*K, row stride KKP) and PB[s, c] = sum GT. Grid (S, cdiv(HID, BH))."""
    s = tl.program_id(0)
    pid_j = tl.program_id(1)
    P = H * W
    offs_j = pid_j * BH + tl.arange(0, BH)
    mj = offs_j < HID
    kcol = tl.arange(0, KKP)
    b1 = tl.load(Bdw + offs_j, mask=mj, other=0.0).to(ACC)
    b2 = tl.load(Bdw + HID + offs_j, mask=mj, other=0.0).to(ACC)
    accw1 = tl.zeros([BH, KKP], dtype=ACC)
    accw2 = tl.zeros([BH, KKP], dtype=ACC)
    accb1 = tl.zeros([BH], dtype=ACC)
    accb2 = tl.zeros([BH], dtype=ACC)
    end = tl.minimum(s * PER + PER, NITEMS)
    for i in range(s * PER, end):
        n = (i // NT).to(tl.int64)
        offs_p = (i % NT) * BP + tl.arange(0, BP)
        mp = offs_p < P
        py = offs_p // W
        px = offs_p % W
        ub = U + n * 2 * HID * P
        t1, t2 = _dw_pair(ub, Wdw, offs_j, mj, offs_p, mp, py, px, HID, H, W, P, K, ACC, BH, BP)
        t1 += b1[:, None]
        t2 += b2[:, None]
        m2 = mj[:, None] & mp[None, :]
        gh = tl.load(GH + n * HID * P + offs_j[:, None] * P + offs_p[None, :], mask=m2, other=0.0).to(ACC)
        gt1 = gh * t2 * gelu_grad(t1)
        gt2 = gh * gelu(t1)
        gtb = GT + n * 2 * HID * P
        tl.store(gtb + offs_j[:, None] * P + offs_p[None, :], gt1, mask=m2)
        tl.store(gtb + (offs_j + HID)[:, None] * P + offs_p[None, :], gt2, mask=m2)
        accb1 += tl.sum(gt1, axis=1)
        accb2 += tl.sum(gt2, axis=1)
        for k in tl.static_range(K * K):
            u1, u2 = _tap_pair(ub, offs_j, mj, offs_p, mp, py, px, HID, H, W, P, k, K, ACC)
            sel = kcol[None, :] == k
            accw1 += tl.where(sel, tl.sum(gt1 * u1, axis=1)[:, None], 0.0)
            accw2 += tl.where(sel, tl.sum(gt2 * u2, axis=1)[:, None], 0.0)
    mw = mj[:, None] & (kcol[None, :] < K * K)
    pwb = PW + s * 2 * HID * KKP
    tl.store(pwb + offs_j[:, None] * KKP + kcol[None, :], accw1, mask=mw)
    tl.store(pwb + (offs_j + HID)[:, None] * KKP + kcol[None, :], accw2, mask=mw)
    tl.store(PB + s * 2 * HID + offs_j, accb1, mask=mj)
    tl.store(PB + s * 2 * HID + HID + offs_j, accb2, mask=mj)


@triton.jit
def dw_transpose_kernel(GT, Wdw, GU, C2, H, W, K: tl.constexpr, ACC: tl.constexpr,
                        BH: tl.constexpr, BP: tl.constexpr):
    """GU[n, c, p] = sum_k Wdw[c, k] GT[n, c, p - off_k] (gradient of a 'same' depthwise KxK through its input).
    GT, GU: (N, C2, H, W). Grid (cdiv(H*W, BP), cdiv(C2, BH), N)."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    P = H * W
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_c = pid_c * BH + tl.arange(0, BH)
    mp = offs_p < P
    mc = offs_c < C2
    py = offs_p // W
    px = offs_p % W
    gb = GT + n * C2 * P
    acc = tl.zeros([BH, BP], dtype=ACC)
    for k in tl.static_range(K * K):
        dy = k // K - (K - 1) // 2
        dx = k % K - (K - 1) // 2
        yy = py - dy
        xx = px - dx
        m = mp & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        q = offs_p - dy * W - dx
        g = tl.load(gb + offs_c[:, None] * P + q[None, :], mask=mc[:, None] & m[None, :], other=0.0).to(ACC)
        w = tl.load(Wdw + offs_c * (K * K) + k, mask=mc, other=0.0).to(ACC)
        acc += w[:, None] * g
    tl.store(GU + n * C2 * P + offs_c[:, None] * P + offs_p[None, :], acc, mask=mc[:, None] & mp[None, :])


def _hid_k(w_in, w_dw):
    two_h = w_in.shape[0]
    if two_h % 2 or w_dw.shape[0] != two_h or w_dw.shape[-1] != w_dw.shape[-2] or w_dw.shape[-1] % 2 == 0:
        raise ValueError(f"gated_dwconv: bad weight shapes w_in {tuple(w_in.shape)}, w_dw {tuple(w_dw.shape)}")
    return two_h // 2, w_dw.shape[-1]


def gated_dwconv_forward(x, w_in, b_in, w_dw, b_dw):
    """x: (N, C, H, W) contiguous; w_in: (2*hid, C, 1, 1), b_in: (2*hid,), w_dw: (2*hid, 1, K, K) odd K,
    b_dw: (2*hid,). Returns h: (N, hid, H, W) in x's dtype (fp32 / fp64 accumulation)."""
    hid, K = _hid_k(w_in, w_dw)
    N, C, H, W = x.shape
    acc = tl_dtype(acc_dtype(x.dtype))
    u = torch.empty(N, 2 * hid, H, W, device=x.device, dtype=x.dtype)
    conv1x1(x, w_in.view(2 * hid, C), b_in, u, raw_dot(x.dtype))
    h = torch.empty(N, hid, H, W, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(H * W, cfg.DW_BP), triton.cdiv(hid, cfg.DW_BH), N)
    gated_dw_fwd_kernel[grid](u, w_dw, b_dw, h, hid, H, W, K=K, ACC=acc, BH=cfg.DW_BH, BP=cfg.DW_BP,
                              num_warps=cfg.DW_WARPS)
    return h


def gated_dwconv_backward(grad_h, x, w_in, b_in, w_dw, b_dw):
    """grad_h: (N, hid, H, W); other arguments as gated_dwconv_forward.
    Returns (grad_x, grad_w_in, grad_b_in, grad_w_dw, grad_b_dw), shaped and typed like the inputs; weight
    gradients are reduced in fp32 (fp64 for fp64) in a fixed order."""
    hid, K = _hid_k(w_in, w_dw)
    N, C, H, W = x.shape
    P = H * W
    adt = acc_dtype(x.dtype)
    acc = tl_dtype(adt)
    w2d = w_in.view(2 * hid, C)
    u = torch.empty(N, 2 * hid, H, W, device=x.device, dtype=adt)
    conv1x1(x, w2d, b_in, u, raw_dot(x.dtype))
    gt = torch.empty_like(u)
    nt = triton.cdiv(P, cfg.DW_BWD_BP)
    S, per = splits(N * nt)
    kkp = triton.next_power_of_2(K * K)
    pw = torch.empty(S, 2 * hid, kkp, device=x.device, dtype=adt)
    pb = torch.empty(S, 2 * hid, device=x.device, dtype=adt)
    gated_dw_bwd_kernel[(S, triton.cdiv(hid, cfg.DW_BH))](
        grad_h, u, w_dw, b_dw, gt, pw, pb, hid, H, W, nt, per, N * nt,
        K=K, KKP=kkp, ACC=acc, BH=cfg.DW_BH, BP=cfg.DW_BWD_BP, num_warps=cfg.DW_WARPS)
    gu = u  # u is no longer needed: reuse its memory for dL/du
    dw_transpose_kernel[(triton.cdiv(P, cfg.DW_BP), triton.cdiv(2 * hid, cfg.DW_BH), N)](
        gt, w_dw, gu, 2 * hid, H, W, K=K, ACC=acc, BH=cfg.DW_BH, BP=cfg.DW_BP, num_warps=cfg.DW_WARPS)
    gx = torch.empty_like(x)
    conv1x1(gu, w2d.t(), None, gx, computed_dot(x.dtype))
    gw_in, gb_in = wgrad(gu, x, True, adt, computed_dot(x.dtype))
    gw_dw = pw.sum(0)[:, :K * K].reshape(w_dw.shape)
    gb_dw = pb.sum(0)
    return (gx, gw_in.view(w_in.shape).to(w_in.dtype), gb_in.to(b_in.dtype), gw_dw.to(w_dw.dtype),
            gb_dw.to(b_dw.dtype))
