"""SADFFM of a folded EIMN block, its residual and the LayerNorm after the block, in three NHWC inference kernels
(forward only, no autograd).

    sadffm_body_kernel  a -> y = W_out h + b_out, h = GELU(t1) * t2, t = DW3x3(W_in a + b_in)   (persistent)
        per tile and per chunk of HC hidden channels (x1's and x2's): U on the tile and its 1-pixel halo is two
        tensor-core GEMMs ([HP, C] x [C, HC]) written to the program's scratch slot (L2), the 3x3 taps read it
        back shifted, h stays in registers and y += h W_out[chunk] (a third GEMM): the 2*hidden-channel U and the
        hidden-channel h never reach HBM. Epilogue: DFFM's LayerNorm z of y, the tile's per-channel sum of z
        (partials, reduced in a fixed order by dffm_global: deterministic), the local branch
        a_loc = w_se[:R] . GELU(W_lr z + b_lr) (a [TP, C] x [C, R] GEMM); writes y and a_loc.
    dffm_global_kernel  per image: mean z -> g = GELU(W_gr mean + b_gr), c = sigmoid(W_ce g + b_ce),
        k = w_se[R:] . g + b_se
    dffm_apply_kernel   out = a + ls2 * y * c * sigmoid(a_loc + k), then the model's LayerNorm over channels
        (optional): the next block's input.

Tensors: a, y, out NHWC contiguous [N, H, W, C] of the activation dtype; W_in^T [C, 2 hid], W_out^T [hid, C],
W_lr^T [C, R] in the activation dtype; the rest float32 (block_pack.py). Accumulation float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import block_config as cfg
from .block_common import dot_config, halo_pixels, halo_rows, load_rows, tile_origin, tile_pixels
from .molrcm_common import gelu, sigmoid

__all__ = ["sadffm_body", "dffm_global", "dffm_apply"]


@triton.jit
def sadffm_body_kernel(A, WinT, Bin, Wdw, Bdw, WoutT, Bout, LNw, LNb, WlrT, Blr, Wsl, Y, ALOC, PART, SCR,
                       H, W, TILES_W, TPI, NTILES, NPROG, EPS,
                       C: tl.constexpr, BC: tl.constexpr, HID: tl.constexpr, HC: tl.constexpr,
                       RR: tl.constexpr, BR: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                       HP: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """Y, ALOC, PART of each tile (module doc). Wdw: [9, 2*HID] tap-major, Bdw / Bin: [2*HID]; PART: [NTILES, BC]
    float32; ALOC: [N*H*W] float32; SCR: [NPROG, HP, 2*HC] (activation dtype). Grid (NPROG,)."""
    pid = tl.program_id(0)
    TP: tl.constexpr = TH * TW
    cc = tl.arange(0, BC)
    mc = cc < C
    hc = tl.arange(0, HC)
    scr = SCR + pid.to(tl.int64) * HP * 2 * HC
    for t in range(pid, NTILES, NPROG):
        n, h0, w0 = tile_origin(t, TPI, TILES_W, TH, TW)
        hr, hv, hpix = halo_pixels(n, h0, w0, H, W, 1, TH, TW, HP, 0, HP)
        oy, ox, ov, opix = tile_pixels(n, h0, w0, H, W, TH, TW)
        acc = tl.zeros([TP, BC], dtype=tl.float32)
        for j0 in range(0, HID, HC):
            jj = j0 + hc
            mj = jj < HID
            at = load_rows(A, hpix, hv, cc, C, C).to(DOT)  # per chunk (L1/L2): not live across the loop
            u1 = tl.dot(at, load_rows(WinT, cc, mc, jj, HID, 2 * HID).to(DOT), input_precision=PREC,
                        out_dtype=tl.float32)
            u2 = tl.dot(at, load_rows(WinT + HID, cc, mc, jj, HID, 2 * HID).to(DOT), input_precision=PREC,
                        out_dtype=tl.float32)
            u1 = tl.where(hv[:, None], u1 + tl.load(Bin + jj, mask=mj, other=0.0)[None, :], 0.0)
            u2 = tl.where(hv[:, None], u2 + tl.load(Bin + HID + jj, mask=mj, other=0.0)[None, :], 0.0)
            tl.debug_barrier()  # the previous chunk's taps have read the slot
            tl.store(scr + hr[:, None] * (2 * HC) + hc[None, :], u1.to(SCR.dtype.element_ty))
            tl.store(scr + hr[:, None] * (2 * HC) + HC + hc[None, :], u2.to(SCR.dtype.element_ty))
            tl.debug_barrier()
            t1 = tl.zeros([TP, HC], dtype=tl.float32) + tl.load(Bdw + jj, mask=mj, other=0.0)[None, :]
            t2 = tl.zeros([TP, HC], dtype=tl.float32) + tl.load(Bdw + HID + jj, mask=mj, other=0.0)[None, :]
            for k in range(9):
                rows = (oy + k // 3) * (TW + 2) + ox + k % 3
                s = scr + rows[:, None] * (2 * HC) + hc[None, :]
                t1 += tl.load(s).to(tl.float32) * tl.load(Wdw + k * 2 * HID + jj, mask=mj, other=0.0)[None, :]
                t2 += tl.load(s + HC).to(tl.float32) * tl.load(Wdw + k * 2 * HID + HID + jj, mask=mj,
                                                                other=0.0)[None, :]
            h = gelu(t1) * t2
            acc = tl.dot(h.to(DOT), load_rows(WoutT, jj, mj, cc, C, C).to(DOT), acc, input_precision=PREC,
                         out_dtype=tl.float32)
        y = acc + tl.load(Bout + cc, mask=mc, other=0.0)[None, :]
        # DFFM epilogue: LayerNorm over the channels, the tile's sum of z, the local branch
        mu = tl.sum(y, axis=1) / C
        d = tl.where(mc[None, :], y - mu[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / C + EPS)
        z = d * rstd[:, None] * tl.load(LNw + cc, mask=mc, other=0.0)[None, :] \
            + tl.load(LNb + cc, mask=mc, other=0.0)[None, :]
        z = tl.where(ov[:, None], z, 0.0)
        tl.store(PART + t * BC + cc, tl.sum(z, axis=0))
        rr = tl.arange(0, BR)
        mr = rr < RR
        loc = tl.dot(z.to(DOT), load_rows(WlrT, cc, mc, rr, RR, RR).to(DOT), input_precision=PREC,
                     out_dtype=tl.float32)
        loc = gelu(loc + tl.load(Blr + rr, mask=mr, other=0.0)[None, :])
        aloc = tl.sum(loc * tl.load(Wsl + rr, mask=mr, other=0.0)[None, :], axis=1)
        tl.store(Y + opix[:, None] * C + cc[None, :], y.to(Y.dtype.element_ty), mask=ov[:, None] & mc[None, :])
        tl.store(ALOC + opix, aloc, mask=ov)


@triton.jit
def dffm_global_kernel(PART, Wgr, Bgr, Wce, Bce, Wsg, Bse, CG, KK, TPI, INV_HW,
                       C: tl.constexpr, BC: tl.constexpr, RR: tl.constexpr, BR: tl.constexpr):
    """Per image n (grid (N,)): zm = sum_t PART[n*TPI + t] * INV_HW (tiles in order), g = GELU(Wgr zm + Bgr),
    CG[n] = sigmoid(Wce g + Bce) [C], KK[n] = Wsg . g + Bse. Wgr: [R, C], Wce: [C, R]; float32."""
    n = tl.program_id(0).to(tl.int64)
    cc = tl.arange(0, BC)
    mc = cc < C
    rr = tl.arange(0, BR)
    mr = rr < RR
    zs = tl.zeros([BC], dtype=tl.float32)
    for t in range(0, TPI):
        zs += tl.load(PART + (n * TPI + t) * BC + cc)
    zm = zs * INV_HW
    m = mr[:, None] & mc[None, :]
    g = tl.sum(tl.load(Wgr + rr[:, None] * C + cc[None, :], mask=m, other=0.0) * zm[None, :], axis=1)
    g = gelu(g + tl.load(Bgr + rr, mask=mr, other=0.0))  # zero on padding rows
    c = tl.sum(tl.load(Wce + cc[None, :] * RR + rr[:, None], mask=m, other=0.0) * g[:, None], axis=0)
    tl.store(CG + n * C + cc, sigmoid(c + tl.load(Bce + cc, mask=mc, other=0.0)), mask=mc)
    k = tl.sum(tl.load(Wsg + rr, mask=mr, other=0.0) * g, axis=0) + tl.load(Bse)
    tl.store(KK + n, k)


@triton.jit
def dffm_apply_kernel(A, Y, ALOC, CG, KK, LS, NW, NB, OUT, NPIX, HW, EPS,
                      HAS_NORM: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr):
    """OUT = A + LS * Y * CG[n] * sigmoid(ALOC + KK[n]), then (HAS_NORM) LayerNorm over C with NW, NB, EPS.
    A, Y, OUT: [NPIX, C]. Grid (cdiv(NPIX, BP),)."""
    p = tl.program_id(0).to(tl.int64) * BP + tl.arange(0, BP)
    mp = p < NPIX
    n = p // HW
    cc = tl.arange(0, BC)
    mc = cc < C
    m = mp[:, None] & mc[None, :]
    at = p[:, None] * C + cc[None, :]
    a = tl.load(A + at, mask=m, other=0.0).to(tl.float32)
    y = tl.load(Y + at, mask=m, other=0.0).to(tl.float32)
    s = sigmoid(tl.load(ALOC + p, mask=mp, other=0.0) + tl.load(KK + n, mask=mp, other=0.0))
    cg = tl.load(CG + n[:, None] * C + cc[None, :], mask=m, other=0.0)
    o = a + tl.load(LS + cc, mask=mc, other=0.0)[None, :] * y * cg * s[:, None]
    if HAS_NORM:
        mu = tl.sum(o, axis=1) / C
        d = tl.where(mc[None, :], o - mu[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / C + EPS)
        o = d * rstd[:, None] * tl.load(NW + cc, mask=mc, other=0.0)[None, :] \
            + tl.load(NB + cc, mask=mc, other=0.0)[None, :]
    tl.store(OUT + at, o.to(OUT.dtype.element_ty), mask=m)


def sadffm_body(a: torch.Tensor, pk):
    """a: [N, H, W, C] NHWC -> (y [N, H, W, C] a's dtype, a_loc [N*H*W] float32, partial sums of z
    [tiles, BC] float32, tiles per image)."""
    N, H, W, C = a.shape
    th, tw, warps, per_sm, hc = cfg.BODY[cfg.dtype_class(a.dtype)]
    hp = halo_rows(th, tw, 1)
    tiles_w = triton.cdiv(W, tw)
    tpi = triton.cdiv(H, th) * tiles_w
    ntiles = N * tpi
    nprog = cfg.persistent_programs(a.device, ntiles, per_sm)
    y = torch.empty_like(a)
    aloc = torch.empty(N * H * W, device=a.device, dtype=torch.float32)
    part = torch.empty(ntiles, pk.bc, device=a.device, dtype=torch.float32)
    scr = torch.empty(nprog, hp, 2 * hc, device=a.device, dtype=a.dtype)
    dot, prec = dot_config(a.dtype, pk.fp32_dot)
    sadffm_body_kernel[(nprog,)](a, pk.win_t, pk.b_in, pk.w_dw, pk.b_dw, pk.wout_t, pk.b_out, pk.ln_w, pk.ln_b,
                                 pk.wlr_t, pk.b_lr, pk.w_sl, y, aloc, part, scr, H, W, tiles_w, tpi, ntiles, nprog,
                                 pk.eps, C=C, BC=pk.bc, HID=pk.hid, HC=hc, RR=pk.rr, BR=pk.br, TH=th, TW=tw, HP=hp,
                                 DOT=dot, PREC=prec, num_warps=warps)
    return y, aloc, part, tpi


def dffm_global(part: torch.Tensor, tpi: int, N: int, HW: int, pk):
    """Partial sums [N*tpi, BC] -> (c [N, C], k [N]) float32: the DFFM's per-image channel gate and spatial bias."""
    cg = torch.empty(N, pk.c, device=part.device, dtype=torch.float32)
    kk = torch.empty(N, device=part.device, dtype=torch.float32)
    dffm_global_kernel[(N,)](part, pk.w_gr, pk.b_gr, pk.w_ce, pk.b_ce, pk.w_sg, pk.b_se, cg, kk, tpi, 1.0 / HW,
                             C=pk.c, BC=pk.bc, RR=pk.rr, BR=pk.br, num_warps=4)
    return cg, kk


def dffm_apply(a: torch.Tensor, y: torch.Tensor, aloc: torch.Tensor, cg, kk, pk, norm=None) -> torch.Tensor:
    """a, y: [N, H, W, C] -> a + ls2 * y * c * s, then LayerNorm over C if ``norm`` = (weight, bias, eps)
    (float32 weight / bias) is given. Same shape and dtype."""
    N, H, W, C = a.shape
    bp, warps, _ = cfg.APPLY[cfg.dtype_class(a.dtype)]
    out = torch.empty_like(a)
    npix = N * H * W
    nw, nb, eps = norm if norm is not None else (pk.ls2, pk.ls2, 0.0)
    dffm_apply_kernel[(triton.cdiv(npix, bp),)](a, y, aloc, cg, kk, pk.ls2, nw, nb, out, npix, H * W, eps,
                                                HAS_NORM=norm is not None, C=C, BC=pk.bc, BP=bp, num_warps=warps)
    return out
