"""MOLRCM of a folded EIMN block in two NHWC inference kernels (forward only, no autograd).

    molrcm_region_kernel  x -> r = DW_{K0}(GELU(Wq x + bq)) + b0
        persistent; per tile, q on the tile and its (K0-1)/2 halo is one tensor-core GEMM ([HP, C] x [C, C]),
        written to the program's scratch slot (L2), read back by the K0 x K0 taps: q never goes to HBM.
    molrcm_mix_kernel     r, x -> a = x + Wo (SiLU(Wf y + bf) * (Wv x + bv)) + bo
        y = [DW_{K1,d1}(r[:c1]), r[c1:c1+c2], DW_{K2,d2}(r[c1+c2:])] in registers (r read with its halo through
        L1/L2), then three tensor-core GEMMs (f, v, a) with bias, SiLU, the gate and the residual in registers.

Kernel sizes and dilations are compile-time (EIMN: 5x5; 5x5 d2 on c1 = 3C/8; 7x7 d3 on c3 = C/2). Tensors: x, r, a
NHWC contiguous [N, H, W, C] of the activation dtype; 1x1 weights transposed [C_in, C_out] in the activation dtype;
biases and depthwise weights float32, depthwise weights tap-major [K*K, padded channels] (block_pack.py makes them).
Accumulation float32. Layer scale 1 and BatchNorm 1 are folded into the weights (eimn_kernels.inference).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import block_config as cfg
from .block_common import dot_config, halo_pixels, halo_rows, load_rows, tile_origin, tile_pixels
from .molrcm_common import gelu

__all__ = ["molrcm_region", "molrcm_mix"]


@triton.jit
def molrcm_region_kernel(X, WqT, Bq, W0, B0, R, SCR, H, W, TILES_W, TPI, NTILES, NPROG,
                         C: tl.constexpr, BC: tl.constexpr, K0: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                         HP: tl.constexpr, HM: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """R = DW_{K0}(GELU(X WqT + Bq); W0) + B0 per tile. Grid (NPROG,); SCR: [NPROG, HP, BC] (activation dtype);
    the haloed GEMM runs in chunks of HM rows."""
    pid = tl.program_id(0)
    HALO: tl.constexpr = (K0 - 1) // 2
    cc = tl.arange(0, BC)
    mc = cc < C
    wq = tl.load(WqT + cc[:, None] * C + cc[None, :], mask=mc[:, None] & mc[None, :], other=0.0).to(DOT)
    bq = tl.load(Bq + cc, mask=mc, other=0.0)
    b0 = tl.load(B0 + cc)
    scr = SCR + pid.to(tl.int64) * HP * BC
    for t in range(pid, NTILES, NPROG):
        n, h0, w0 = tile_origin(t, TPI, TILES_W, TH, TW)
        tl.debug_barrier()  # the previous tile's taps have read the slot
        for m0 in tl.static_range(0, HP, HM):  # the haloed GEMM in row chunks (registers)
            hr, hv, hpix = halo_pixels(n, h0, w0, H, W, HALO, TH, TW, HP, m0, HM)
            xt = load_rows(X, hpix, hv, cc, C, C)
            q = gelu(tl.dot(xt.to(DOT), wq, input_precision=PREC, out_dtype=tl.float32) + bq[None, :])
            q = tl.where(hv[:, None], q, 0.0)  # r's zero padding is q's
            tl.store(scr + hr[:, None] * BC + cc[None, :], q.to(SCR.dtype.element_ty))
        tl.debug_barrier()
        oy, ox, ov, opix = tile_pixels(n, h0, w0, H, W, TH, TW)
        acc = tl.zeros([TH * TW, BC], dtype=tl.float32) + b0[None, :]
        for k in range(K0 * K0):
            rows = (oy + k // K0) * (TW + 2 * HALO) + ox + k % K0
            v = tl.load(scr + rows[:, None] * BC + cc[None, :])
            acc += v.to(tl.float32) * tl.load(W0 + k * BC + cc)[None, :]
        tl.store(R + opix[:, None] * C + cc[None, :], acc.to(R.dtype.element_ty), mask=ov[:, None] & mc[None, :])


@triton.jit
def _dilated(R, n, py, px, pv, H, W, c0, CN: tl.constexpr, CP: tl.constexpr, C: tl.constexpr,
             Wd, Bd, K: tl.constexpr, D: tl.constexpr, TP: tl.constexpr):
    """[TP, CP] depthwise K x K conv, dilation D, zero-padded 'same', of r's channels c0 .. c0+CN at the tile's
    pixels (py, px); Wd tap-major [K*K, CP], Bd [CP] (float32, zero on padding channels)."""
    cj = tl.arange(0, CP)
    mj = cj < CN
    acc = tl.zeros([TP, CP], dtype=tl.float32) + tl.load(Bd + cj)[None, :]
    HALO: tl.constexpr = D * (K - 1) // 2
    for k in range(K * K):
        yy = py + D * (k // K) - HALO
        xx = px + D * (k % K) - HALO
        m = pv & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        pix = (n * H + yy.to(tl.int64)) * W + xx
        v = tl.load(R + pix[:, None] * C + c0 + cj[None, :], mask=m[:, None] & mj[None, :], other=0.0)
        acc += v.to(tl.float32) * tl.load(Wd + k * CP + cj)[None, :]
    return acc


@triton.jit
def molrcm_mix_kernel(R, X, W1, B1, W2, B2, WfT, Bf, WvT, Bv, WoT, Bo, A, H, W, TILES_W, TPI,
                      C: tl.constexpr, BC: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr,
                      C1P: tl.constexpr, C2P: tl.constexpr, C3P: tl.constexpr,
                      K1: tl.constexpr, D1: tl.constexpr, K2: tl.constexpr, D2: tl.constexpr,
                      TH: tl.constexpr, TW: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """A = X + WoT^T (SiLU(WfT^T y + Bf) * (WvT^T X + Bv)) + Bo for one tile; y from R (see module doc).
    Grid (NTILES,)."""
    n, h0, w0 = tile_origin(tl.program_id(0), TPI, TILES_W, TH, TW)
    oy, ox, pv, pix = tile_pixels(n, h0, w0, H, W, TH, TW)
    py = h0 + oy
    px = w0 + ox
    C3: tl.constexpr = C - C1 - C2
    cc = tl.arange(0, BC)
    mc = cc < C
    c1 = tl.arange(0, C1P)
    c2 = tl.arange(0, C2P)
    c3 = tl.arange(0, C3P)
    # f = Wf y + bf, one branch of y at a time (few live registers)
    y1 = _dilated(R, n, py, px, pv, H, W, 0, C1, C1P, C, W1, B1, K1, D1, TH * TW)
    f = tl.dot(y1.to(DOT), load_rows(WfT, c1, c1 < C1, cc, C, C).to(DOT), input_precision=PREC,
               out_dtype=tl.float32)
    y2 = tl.load(R + pix[:, None] * C + C1 + c2[None, :], mask=pv[:, None] & (c2 < C2)[None, :], other=0.0)
    f = tl.dot(y2.to(DOT), load_rows(WfT + C1 * C, c2, c2 < C2, cc, C, C).to(DOT), f, input_precision=PREC,
               out_dtype=tl.float32)
    y3 = _dilated(R, n, py, px, pv, H, W, C1 + C2, C3, C3P, C, W2, B2, K2, D2, TH * TW)
    f = tl.dot(y3.to(DOT), load_rows(WfT + (C1 + C2) * C, c3, c3 < C3, cc, C, C).to(DOT), f,
               input_precision=PREC, out_dtype=tl.float32)
    f += tl.load(Bf + cc, mask=mc, other=0.0)[None, :]
    v = tl.dot(load_rows(X, pix, pv, cc, C, C).to(DOT), load_rows(WvT, cc, mc, cc, C, C).to(DOT),
               input_precision=PREC, out_dtype=tl.float32)
    g = f / (1.0 + tl.exp(-f)) * (v + tl.load(Bv + cc, mask=mc, other=0.0)[None, :])
    a = tl.dot(g.to(DOT), load_rows(WoT, cc, mc, cc, C, C).to(DOT), input_precision=PREC, out_dtype=tl.float32)
    # the residual: x read again (an L1/L2 hit) rather than kept live across the GEMMs
    a += tl.load(Bo + cc, mask=mc, other=0.0)[None, :] + load_rows(X, pix, pv, cc, C, C).to(tl.float32)
    tl.store(A + pix[:, None] * C + cc[None, :], a.to(A.dtype.element_ty), mask=pv[:, None] & mc[None, :])


def _tiles(N: int, H: int, W: int, th: int, tw: int) -> tuple[int, int]:
    """(TILES_W, tiles per image)."""
    tiles_w = triton.cdiv(W, tw)
    return tiles_w, triton.cdiv(H, th) * tiles_w


def molrcm_region(x: torch.Tensor, pk) -> torch.Tensor:
    """x: [N, H, W, C] NHWC contiguous -> r: [N, H, W, C] = DW_{K0}(GELU(Wq x + bq)) + b0 (pk: block_pack.Packed)."""
    N, H, W, C = x.shape
    th, tw, warps, per_sm = cfg.REGION[cfg.dtype_class(x.dtype)]
    halo = (pk.k0 - 1) // 2
    hp = halo_rows(th, tw, halo)
    tiles_w, tpi = _tiles(N, H, W, th, tw)
    ntiles = N * tpi
    nprog = cfg.persistent_programs(x.device, ntiles, per_sm)
    r = torch.empty_like(x)
    scr = torch.empty(nprog, hp, pk.bc, device=x.device, dtype=x.dtype)
    dot, prec = dot_config(x.dtype, pk.fp32_dot)
    molrcm_region_kernel[(nprog,)](x, pk.wq_t, pk.bq, pk.w0, pk.b0, r, scr, H, W, tiles_w, tpi, ntiles, nprog,
                                   C=C, BC=pk.bc, K0=pk.k0, TH=th, TW=tw, HP=hp, HM=min(hp, cfg.REGION_ROWS), DOT=dot, PREC=prec,
                                   num_warps=warps)
    return r


def molrcm_mix(r: torch.Tensor, x: torch.Tensor, pk) -> torch.Tensor:
    """r, x: [N, H, W, C] NHWC contiguous -> a = x + MOLRCM'(x) (the folded attention plus its residual)."""
    N, H, W, C = x.shape
    th, tw, warps, _ = cfg.MIX[cfg.dtype_class(x.dtype)]
    tiles_w, tpi = _tiles(N, H, W, th, tw)
    a = torch.empty_like(x)
    dot, prec = dot_config(x.dtype, pk.fp32_dot)
    molrcm_mix_kernel[(N * tpi,)](r, x, pk.w1, pk.b1, pk.w2, pk.b2, pk.wf_t, pk.bf, pk.wv_t, pk.bv, pk.wo_t, pk.bo,
                                  a, H, W, tiles_w, tpi, C=C, BC=pk.bc, C1=pk.c1, C2=pk.c2, C1P=pk.c1p, C2P=pk.c2p,
                                  C3P=pk.c3p, K1=pk.k1, D1=pk.d1, K2=pk.k2, D2=pk.d2, TH=th, TW=tw, DOT=dot,
                                  PREC=prec, num_warps=warps)
    return a
