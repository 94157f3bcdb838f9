"""Triton kernels of dffm_out (SADFFM back): y = W_out h + b_out, DFFM gate y * c * s.

z = channel-LayerNorm(y); g = GELU(W_gr mean_HW(z) + b_gr); l = GELU(W_lr z + b_lr);
c = sigmoid(W_ce g + b_ce); s = sigmoid(W_se [l; g] + b_se).

Forward, two passes as the global mean requires:
  pass 1 (per pixel tile): y by tl.dot (written into the output buffer, rounded to its dtype), z, and
          per-tile channel sums of z (buffer (N, tiles, C), reduced in fixed order, no atomics);
  global  torch ops on (N, C) / (N, R) tensors: g, c and gs = w_se[R:] . g + b_se;
  pass 2 (per pixel tile): reloads y, recomputes z, l = GELU(W_lr z + b_lr) by tl.dot, s, writes y*c*s in place.
Backward: pass 1 again (y kept in the accumulator dtype); pass B per tile: partial sums for dL/dc, dL/d(pre-s),
W_se[:R], W_lr, b_lr; global torch ops give the (N, C) gradient reaching z through the mean; pass C per tile:
dL/dz, LayerNorm backward, dL/dy (written), partial ln_w / ln_b sums; then dL/dh = W_out^T gy (GEMM) and the
W_out / b_out gradients (deterministic partial GEMM).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import sadffm_config as cfg
from .sadffm_common import acc_dtype, computed_dot, conv1x1, gelu, gelu_grad, raw_dot, sigmoid, tl_dtype, wgrad


@triton.jit
def _layernorm(y, mc, LNW, LNB, offs_c, C, eps, ACC: tl.constexpr):
    """Channel LayerNorm of a [BC, BP] tile (channels on axis 0, masked by mc). Returns (z, zhat, rstd);
    z and zhat are 0 on padded channels."""
    y = tl.where(mc[:, None], y, 0.0)
    mean = tl.sum(y, axis=0) / C
    d = tl.where(mc[:, None], y - mean[None, :], 0.0)
    var = tl.sum(d * d, axis=0) / C
    rstd = 1.0 / tl.sqrt(var + eps)
    zhat = d * rstd[None, :]
    lnw = tl.load(LNW + offs_c, mask=mc, other=0.0).to(ACC)
    lnb = tl.load(LNB + offs_c, mask=mc, other=0.0).to(ACC)
    z = zhat * lnw[:, None] + lnb[:, None]
    return z, zhat, rstd


@triton.jit
def _local_gate(z, WLR, BLR, WSE, gconst, offs_r, mr, offs_c, mc, C,
                ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    """a_l = W_lr z + b_lr ([BR, BP]), l = GELU(a_l), s = sigmoid(w_se[:R] . l + gconst). Returns (a_l, l, s, wse_l)."""
    wlr = tl.load(WLR + offs_r[:, None] * C + offs_c[None, :], mask=mr[:, None] & mc[None, :], other=0.0)
    al = tl.dot(wlr.to(DOT), z.to(DOT), tl.zeros([BR, BP], dtype=ACC), input_precision=PREC, out_dtype=ACC)
    al += tl.load(BLR + offs_r, mask=mr, other=0.0).to(ACC)[:, None]
    lo = gelu(al)
    wse_l = tl.load(WSE + offs_r, mask=mr, other=0.0).to(ACC)
    s = sigmoid(tl.sum(wse_l[:, None] * lo, axis=0) + gconst)
    return al, lo, s, wse_l


@triton.jit
def dffm_y_kernel(Hh, Wout, Bout, LNW, LNB, Y, ZS, HID, C, P, NT, eps,
                  RDT: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                  BC: tl.constexpr, BH: tl.constexpr, BP: tl.constexpr):
    """Pass 1. Hh: (N, HID, P) -> Y: (N, C, P) = W_out h + b_out (rounded to RDT first), ZS[n, tile, c] =
    sum over the tile's pixels of z. Grid (NT, N)."""
    tile = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs_p = tile * BP + tl.arange(0, BP)
    offs_c = tl.arange(0, BC)
    mp = offs_p < P
    mc = offs_c < C
    hb = Hh + n * HID * P
    y = tl.zeros([BC, BP], dtype=ACC)
    for j0 in range(0, HID, BH):
        offs_j = j0 + tl.arange(0, BH)
        mj = offs_j < HID
        w = tl.load(Wout + offs_c[:, None] * HID + offs_j[None, :], mask=mc[:, None] & mj[None, :], other=0.0)
        hv = tl.load(hb + offs_j[:, None] * P + offs_p[None, :], mask=mj[:, None] & mp[None, :], other=0.0)
        y = tl.dot(w.to(DOT), hv.to(DOT), y, input_precision=PREC, out_dtype=ACC)
    y += tl.load(Bout + offs_c, mask=mc, other=0.0).to(ACC)[:, None]
    y = y.to(RDT).to(ACC)
    m2 = mc[:, None] & mp[None, :]
    tl.store(Y + n * C * P + offs_c[:, None] * P + offs_p[None, :], y, mask=m2)
    z, zhat, rstd = _layernorm(y, mc, LNW, LNB, offs_c, C, eps, ACC)
    tl.store(ZS + (n * NT + tile) * C + offs_c, tl.sum(tl.where(mp[None, :], z, 0.0), axis=1), mask=mc)


@triton.jit
def _gate_on_tile(Y, LNW, LNB, WLR, BLR, WSE, CV, GC, C, R, P, eps,
                  ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                  BC: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    """The gate recomputed on this program's pixel tile (program_id(0)) of image program_id(1): the prologue
    of pass 2 and of backward passes B and C. Returns (n, offs_c, offs_r, mc, mr, m2, ptrs, y, z, zhat, rstd, al,
    l, s, wse_l, cv): masks, element offsets of the [BC, BP] tile, y, the LayerNorm output z (and zhat, rstd),
    the local gate (a_l, l, s, w_se[:R]) and the channel gate c of image n."""
    n = tl.program_id(1).to(tl.int64)
    offs_p = tl.program_id(0) * BP + tl.arange(0, BP)
    offs_c = tl.arange(0, BC)
    offs_r = tl.arange(0, BR)
    mc = offs_c < C
    mr = offs_r < R
    m2 = mc[:, None] & (offs_p < P)[None, :]
    ptrs = n * C * P + offs_c[:, None] * P + offs_p[None, :]
    y = tl.load(Y + ptrs, mask=m2, other=0.0).to(ACC)
    z, zhat, rstd = _layernorm(y, mc, LNW, LNB, offs_c, C, eps, ACC)
    gconst = tl.load(GC + n).to(ACC)
    al, lo, s, wse_l = _local_gate(z, WLR, BLR, WSE, gconst, offs_r, mr, offs_c, mc, C, ACC, DOT, PREC, BR, BP)
    cv = tl.load(CV + n * C + offs_c, mask=mc, other=0.0).to(ACC)
    return n, offs_c, offs_r, mc, mr, m2, ptrs, y, z, zhat, rstd, al, lo, s, wse_l, cv


@triton.jit
def dffm_gate_kernel(Y, LNW, LNB, WLR, BLR, WSE, CV, GC, OUT, C, R, P, eps,
                     ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                     BC: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    """Pass 2. Y: (N, C, P); CV: (N, C) = c; GC: (N,) = w_se[R:] . g + b_se. OUT = y * c * s (may alias Y).
    Grid (NT, N)."""
    n, offs_c, offs_r, mc, mr, m2, ptrs, y, z, zhat, rstd, al, lo, s, wse_l, cv = _gate_on_tile(
        Y, LNW, LNB, WLR, BLR, WSE, CV, GC, C, R, P, eps, ACC, DOT, PREC, BC, BR, BP)
    tl.store(OUT + ptrs, y * cv[:, None] * s[None, :], mask=m2)


@triton.jit
def dffm_bwd_b_kernel(GO, Y, LNW, LNB, WLR, BLR, WSE, CV, GC, PGC, PGS, PWSL, PBLR, PWLR, C, R, P, NT, eps,
                      ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                      BC: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    """Backward pass B, per (tile, n), writing partial sums at index q = n*NT + tile:
    PGC[q, c] = sum_p go*y*s (-> dL/dc), PGS[q] = sum_p da_s (da_s = dL/d(pre-sigmoid s)),
    PWSL[q, r] = sum_p da_s * l, PBLR[q, r] = sum_p da_l, PWLR[q, r, c] = sum_p da_l z. Grid (NT, N)."""
    n, offs_c, offs_r, mc, mr, m2, ptrs, y, z, zhat, rstd, al, lo, s, wse_l, cv = _gate_on_tile(
        Y, LNW, LNB, WLR, BLR, WSE, CV, GC, C, R, P, eps, ACC, DOT, PREC, BC, BR, BP)
    q = n * NT + tl.program_id(0)
    go = tl.load(GO + ptrs, mask=m2, other=0.0).to(ACC)
    goy = go * y
    tl.store(PGC + q * C + offs_c, tl.sum(goy * s[None, :], axis=1), mask=mc)
    das = tl.sum(goy * cv[:, None], axis=0) * s * (1.0 - s)  # 0 on padded pixels (go = 0 there)
    tl.store(PGS + q, tl.sum(das, axis=0))
    tl.store(PWSL + q * R + offs_r, tl.sum(das[None, :] * lo, axis=1), mask=mr)
    dal = das[None, :] * wse_l[:, None] * gelu_grad(al)
    tl.store(PBLR + q * R + offs_r, tl.sum(dal, axis=1), mask=mr)
    pw = tl.dot(dal.to(DOT), tl.trans(z.to(DOT)), tl.zeros([BR, BC], dtype=ACC), input_precision=PREC, out_dtype=ACC)
    tl.store(PWLR + q * R * C + offs_r[:, None] * C + offs_c[None, :], pw, mask=mr[:, None] & mc[None, :])


@triton.jit
def dffm_bwd_c_kernel(GO, Y, LNW, LNB, WLR, BLR, WSE, CV, GC, GMP, GY, PLNW, PLNB, C, R, P, NT, eps,
                      ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                      BC: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    """Backward pass C: GY = dL/dy (N, C, P) in the accumulator dtype, with dL/dz = W_lr^T da_l + GMP[n]
    (GMP: (N, C), the gradient through the global mean, already divided by H*W), LayerNorm backward and the
    direct term go*c*s; partials PLNW[q, c] = sum_p dz*zhat, PLNB[q, c] = sum_p dz. Grid (NT, N)."""
    n, offs_c, offs_r, mc, mr, m2, ptrs, y, z, zhat, rstd, al, lo, s, wse_l, cv = _gate_on_tile(
        Y, LNW, LNB, WLR, BLR, WSE, CV, GC, C, R, P, eps, ACC, DOT, PREC, BC, BR, BP)
    q = n * NT + tl.program_id(0)
    go = tl.load(GO + ptrs, mask=m2, other=0.0).to(ACC)
    das = tl.sum(go * y * cv[:, None], axis=0) * s * (1.0 - s)
    dal = das[None, :] * wse_l[:, None] * gelu_grad(al)
    wlr_t = tl.load(WLR + offs_r[None, :] * C + offs_c[:, None], mask=mr[None, :] & mc[:, None], other=0.0)
    dz = tl.dot(wlr_t.to(DOT), dal.to(DOT), tl.zeros([BC, BP], dtype=ACC), input_precision=PREC, out_dtype=ACC)
    dz += tl.load(GMP + n * C + offs_c, mask=mc, other=0.0).to(ACC)[:, None]
    dz = tl.where(m2, dz, 0.0)
    tl.store(PLNW + q * C + offs_c, tl.sum(dz * zhat, axis=1), mask=mc)
    tl.store(PLNB + q * C + offs_c, tl.sum(dz, axis=1), mask=mc)
    lnw = tl.load(LNW + offs_c, mask=mc, other=0.0).to(ACC)
    dzh = dz * lnw[:, None]
    m1 = tl.sum(dzh, axis=0) / C
    m2s = tl.sum(dzh * zhat, axis=0) / C
    gy = rstd[None, :] * (dzh - m1[None, :] - zhat * m2s[None, :]) + go * cv[:, None] * s[None, :]
    tl.store(GY + ptrs, gy, mask=m2)


def _blocks(C, R):
    return max(16, triton.next_power_of_2(C)), max(16, triton.next_power_of_2(R))


def _global(zs, P, w_gr, b_gr, w_ce, b_ce, w_se, b_se, adt):
    """From per-tile z sums (N, NT, C): m, a_g, g, c, gconst (all in dtype adt; (N, C)/(N, R) torch ops)."""
    R = w_gr.shape[0]
    m = zs.sum(1) / P
    a_g = m @ w_gr.view(R, -1).to(adt).t() + b_gr.to(adt)
    g = 0.5 * a_g * (1.0 + torch.erf(a_g * 0.7071067811865476))
    cv = torch.sigmoid(g @ w_ce.view(-1, R).to(adt).t() + b_ce.to(adt))
    gconst = g @ w_se.view(-1)[R:].to(adt) + b_se.to(adt)
    return m, a_g, g, cv.contiguous(), gconst.contiguous()


def _pass1(h, w_out, b_out, ln_w, ln_b, eps, y, rdt):
    N, hid, H, W = h.shape
    C = w_out.shape[0]
    P = H * W
    adt = acc_dtype(h.dtype)
    nt = triton.cdiv(P, cfg.DFFM_BP)
    zs = torch.empty(N, nt, C, device=h.device, dtype=adt)
    BC = max(16, triton.next_power_of_2(C))
    dot = raw_dot(h.dtype)
    dffm_y_kernel[(nt, N)](h, w_out, b_out, ln_w, ln_b, y, zs, hid, C, P, nt, eps,
                           RDT=tl_dtype(rdt), ACC=tl_dtype(adt), DOT=dot[0], PREC=dot[1],
                           BC=BC, BH=cfg.DFFM_BH, BP=cfg.DFFM_BP, num_warps=cfg.DFFM_WARPS)
    return zs, nt


def dffm_out_forward(h, w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se, eps):
    """h: (N, hid, H, W) contiguous; w_out: (C, hid, 1, 1), b_out/ln_w/ln_b/b_ce: (C,), w_gr/w_lr: (R, C, 1, 1),
    b_gr/b_lr: (R,), w_ce: (C, R, 1, 1), w_se: (1, 2R, 1, 1), b_se: (1,). Returns y*c*s: (N, C, H, W) in h's dtype."""
    N, hid, H, W = h.shape
    C, R, P = w_out.shape[0], w_gr.shape[0], H * W
    adt = acc_dtype(h.dtype)
    out = torch.empty(N, C, H, W, device=h.device, dtype=h.dtype)
    zs, nt = _pass1(h, w_out, b_out, ln_w, ln_b, eps, out, h.dtype)
    m, a_g, g, cv, gconst = _global(zs, P, w_gr, b_gr, w_ce, b_ce, w_se, b_se, adt)
    BC, BR = _blocks(C, R)
    dot = computed_dot(h.dtype)
    dffm_gate_kernel[(nt, N)](out, ln_w, ln_b, w_lr, b_lr, w_se, cv, gconst, out, C, R, P, eps,
                              ACC=tl_dtype(adt), DOT=dot[0], PREC=dot[1], BC=BC, BR=BR, BP=cfg.DFFM_BP,
                              num_warps=cfg.DFFM_WARPS)
    return out


def dffm_out_backward(grad_out, h, w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se,
                      eps):
    """grad_out: (N, C, H, W); other arguments as dffm_out_forward. Returns the 13 gradients
    (h, w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se), shaped and typed like
    the inputs; weight gradients reduced in fp32 (fp64 for fp64) in a fixed order."""
    N, hid, H, W = h.shape
    C, R, P = w_out.shape[0], w_gr.shape[0], H * W
    adt = acc_dtype(h.dtype)
    acc = tl_dtype(adt)
    dev = h.device
    y = torch.empty(N, C, H, W, device=dev, dtype=adt)
    zs, nt = _pass1(h, w_out, b_out, ln_w, ln_b, eps, y, h.dtype)
    m, a_g, g, cv, gconst = _global(zs, P, w_gr, b_gr, w_ce, b_ce, w_se, b_se, adt)
    BC, BR = _blocks(C, R)
    dot = computed_dot(h.dtype)
    kw = dict(ACC=acc, DOT=dot[0], PREC=dot[1], BC=BC, BR=BR, BP=cfg.DFFM_BP, num_warps=cfg.DFFM_WARPS)
    pgc = torch.empty(N, nt, C, device=dev, dtype=adt)
    pgs = torch.empty(N, nt, device=dev, dtype=adt)
    pwsl = torch.empty(N, nt, R, device=dev, dtype=adt)
    pblr = torch.empty(N, nt, R, device=dev, dtype=adt)
    pwlr = torch.empty(N, nt, R, C, device=dev, dtype=adt)
    dffm_bwd_b_kernel[(nt, N)](grad_out, y, ln_w, ln_b, w_lr, b_lr, w_se, cv, gconst, pgc, pgs, pwsl, pblr, pwlr,
                               C, R, P, nt, eps, **kw)
    # Global branch (tiny (N, C) / (N, R) tensors).
    w_gr2, w_ce2, w_se1 = w_gr.view(R, C).to(adt), w_ce.view(C, R).to(adt), w_se.view(-1).to(adt)
    da_c = pgc.sum(1) * cv * (1.0 - cv)                       # (N, C)
    gsum = pgs.sum(1)                                          # (N,)
    gg = da_c @ w_ce2 + gsum[:, None] * w_se1[R:][None, :]     # (N, R)
    cdf = 0.5 * (1.0 + torch.erf(a_g * 0.7071067811865476))
    da_g = gg * (cdf + a_g * torch.exp(-0.5 * a_g * a_g) * 0.3989422804014327)
    gmp = ((da_g @ w_gr2) / P).contiguous()                    # (N, C)
    gy = y  # y is re-read tile by tile and overwritten by dL/dy in the same program
    plnw = torch.empty(N, nt, C, device=dev, dtype=adt)
    plnb = torch.empty(N, nt, C, device=dev, dtype=adt)
    dffm_bwd_c_kernel[(nt, N)](grad_out, y, ln_w, ln_b, w_lr, b_lr, w_se, cv, gconst, gmp, gy, plnw, plnb,
                               C, R, P, nt, eps, **kw)
    gh = torch.empty_like(h)
    conv1x1(gy, w_out.view(C, hid).t(), None, gh, dot)
    gw_out, gb_out = wgrad(gy, h, True, adt, dot)
    grads_w = (gw_out.view(w_out.shape), gb_out, plnw.sum((0, 1)), plnb.sum((0, 1)),
               (da_g.t() @ m).view(w_gr.shape), da_g.sum(0), pwlr.sum((0, 1)).view(w_lr.shape), pblr.sum((0, 1)),
               (da_c.t() @ g).view(w_ce.shape), da_c.sum(0),
               torch.cat([pwsl.sum((0, 1)), (g * gsum[:, None]).sum(0)]).view(w_se.shape), gsum.sum().view(1))
    refs = (w_out, b_out, ln_w, ln_b, w_gr, b_gr, w_lr, b_lr, w_ce, b_ce, w_se, b_se)
    return (gh,) + tuple(gw.to(r.dtype) for gw, r in zip(grads_w, refs))
