"""Triton kernels of MOLRCM's depthwise mixing (dw_mix), forward and backward.

dw_mix: r = DW_{K0,d0}(q) + b0 (zero outside the image); y = cat(DW_{K1,d1}(r[:c1]), r[c1:c1+c2],
DW_{K2,d2}(r[c1+c2:])). Work is split into channel blocks that never straddle the three groups
(group taken from the channel-block program id), times spatial tiles of TILE_H x TILE_W pixels.

Forward (one kernel, persistent): for each work item the program computes r on the tile plus the
halo of its group's second conv (radius d*(K-1)/2) into its own scratch slot (a small fp32 buffer
reused for every item the program processes, so it stays in L1/L2; Triton cannot index shared
memory by shifted offsets), then the dilated conv of the tile from that slot. r never goes to
global memory as a full tensor.

Backward (three launches): r recomputed once to a buffer; then the generic depthwise backward
kernel twice (second convs with the group split, then the first conv), each producing the input
gradient and per-tile partial weight/bias gradients (reduced in fixed order afterwards).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dw_at(src_ptr, w_ptr, b_ptr, c, cm, gh, gw, valid, H, W, K, D, ACC: tl.constexpr):
    """DW_{K,D}(src)[c, gh, gw] + b[c] ('same' zero padding) for a [BLOCK_C, BLOCK] block of
    positions; 0 where not ``valid``. src_ptr points at channel 0 of the image."""
    hk = (K - 1) // 2
    acc = tl.zeros([c.shape[0], gh.shape[0]], dtype=ACC) + tl.load(b_ptr + c, mask=cm, other=0.0).to(ACC)[:, None]
    for tap in range(K * K):
        sh = gh + (tap // K - hk) * D
        sw = gw + (tap % K - hk) * D
        m = valid & (sh >= 0) & (sh < H) & (sw >= 0) & (sw < W)
        x = tl.load(src_ptr + c[:, None] * (H * W) + (sh * W + sw)[None, :], mask=cm[:, None] & m[None, :],
                    other=0.0)
        wt = tl.load(w_ptr + c * (K * K) + tap, mask=cm, other=0.0)
        acc += x.to(ACC) * wt.to(ACC)[:, None]
    return tl.where(valid[None, :], acc, 0.0)


@triton.jit
def _group_of(cb, NB1, NB2, c1, c2, C, K1, D1, K2, D2, BLOCK_C: tl.constexpr):
    """Channel block cb -> (is_g1, is_g3, first channel, end channel, K, D) of its group
    (group 2, the identity, gets K = 1)."""
    is1 = cb < NB1
    is3 = cb >= NB1 + NB2
    c0 = tl.where(is1, cb * BLOCK_C, tl.where(is3, c1 + c2 + (cb - NB1 - NB2) * BLOCK_C, c1 + (cb - NB1) * BLOCK_C))
    cend = tl.where(is1, c1, tl.where(is3, C, c1 + c2))
    k = tl.where(is1, K1, tl.where(is3, K2, 1))
    d = tl.where(is1, D1, tl.where(is3, D2, 1))
    return is1, is3, c0, cend, k, d


@triton.jit
def _group_w(w1_ptr, w2_ptr, c, cm, c1, c12, KK, tap):
    """Tap weight of channels c (global index) of group 1 (c < c1: w1), 3 (c >= c12: w2, channel
    c - c12) or 1.0 (identity group)."""
    wa = tl.load(w1_ptr + c * KK + tap, mask=cm & (c < c1), other=0.0)
    wb = tl.load(w2_ptr + (c - c12) * KK + tap, mask=cm & (c >= c12), other=0.0)
    return tl.where((c < c1) | (c >= c12), wa + wb, 1.0)


@triton.jit
def dw_mix_fwd_kernel(q_ptr, w0_ptr, b0_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, y_ptr, scratch_ptr,
                      C, H, W, c1, c2, K0, D0, K1, D1, K2, D2, NB1, NB2, NBT, TILES_W, N_TILES, TOTAL, SLOT,
                      TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_E: tl.constexpr,
                      ACC: tl.constexpr):
    """Fused dw_mix forward; persistent loop over work items (n, channel block, tile)."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    HW = H * W
    cl = tl.arange(0, BLOCK_C)
    slot = scratch_ptr + pid.to(tl.int64) * (BLOCK_C * SLOT) + cl[:, None] * SLOT
    o = tl.arange(0, TILE_H * TILE_W)
    oh = o // TILE_W
    ow = o % TILE_W
    for item in range(pid, TOTAL, nprog):
        t = item % N_TILES
        cb = (item // N_TILES) % NBT
        n = (item // N_TILES // NBT).to(tl.int64)
        is1, is3, c0, cend, k, d = _group_of(cb, NB1, NB2, c1, c2, C, K1, D1, K2, D2, BLOCK_C)
        c = c0 + cl
        cm = c < cend
        h0 = (t // TILES_W) * TILE_H
        w0 = (t % TILES_W) * TILE_W
        rad = d * (k - 1) // 2
        EW = TILE_W + 2 * rad
        n_ext = (TILE_H + 2 * rad) * EW
        img = q_ptr + n * C * HW
        # phase 1: r on tile + halo -> scratch slot (zero outside the image: padding of the 2nd conv)
        for e0 in range(0, n_ext, BLOCK_E):
            e = e0 + tl.arange(0, BLOCK_E)
            gh = h0 - rad + e // EW
            gw = w0 - rad + e % EW
            valid = (e < n_ext) & (gh >= 0) & (gh < H) & (gw >= 0) & (gw < W)
            r = _dw_at(img, w0_ptr, b0_ptr, c, cm, gh, gw, valid, H, W, K0, D0, ACC)
            tl.store(slot + e[None, :], r, mask=cm[:, None] & (e < n_ext)[None, :])
        tl.debug_barrier()
        # phase 2: second (dilated) conv of the tile from the slot; identity group: k = 1, weight 1
        KK = k * k
        c12 = c1 + c2
        bias = tl.load(b1_ptr + c, mask=cm & (c < c1), other=0.0) + tl.load(b2_ptr + (c - c12), mask=cm & (c >= c12),
                                                                   other=0.0)
        acc = tl.zeros([BLOCK_C, TILE_H * TILE_W], dtype=ACC) + bias.to(ACC)[:, None]
        for tap in range(KK):
            rv = tl.load(slot + ((oh + (tap // k) * d) * EW + ow + (tap % k) * d)[None, :], mask=cm[:, None], other=0.0)
            acc += rv * _group_w(w1_ptr, w2_ptr, c, cm, c1, c12, KK, tap).to(ACC)[:, None]
        gh = h0 + oh
        gw = w0 + ow
        om = (gh < H) & (gw < W)
        tl.store(y_ptr + n * C * HW + c[:, None] * HW + (gh * W + gw)[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=cm[:, None] & om[None, :])
        tl.debug_barrier()  # the slot is rewritten by the next item


@triton.jit
def dw_conv_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, C, H, W, K, D, TILES_W,
                       TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """out = DW_{K,D}(x) + b for one tile x channel block x image (grid (tiles, channel blocks, N))."""
    t = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    n = tl.program_id(2).to(tl.int64)
    o = tl.arange(0, TILE_H * TILE_W)
    gh = (t // TILES_W) * TILE_H + o // TILE_W
    gw = (t % TILES_W) * TILE_W + o % TILE_W
    om = (gh < H) & (gw < W)
    r = _dw_at(x_ptr + n * C * H * W, w_ptr, b_ptr, c, cm, gh, gw, om, H, W, K, D, ACC)
    tl.store(out_ptr + n * C * H * W + c[:, None] * (H * W) + (gh * W + gw)[None, :],
             r.to(out_ptr.dtype.element_ty), mask=cm[:, None] & om[None, :])


@triton.jit
def dw_conv_bwd_kernel(go_ptr, x_ptr, w1_ptr, w2_ptr, gx_ptr, part_ptr,
                       C, H, W, c1, c2, K1, D1, K2, D2, NB1, NB2, TILES_W, KKMAX,
                       TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Backward of the grouped depthwise conv o = cat(DW_{K1,D1}(x[:c1]), x[c1:c1+c2], DW_{K2,D2}(x[c1+c2:]))
    (+ biases) given go = dL/do: gx = dL/dx for one tile x channel block x image, and partial
    gradients dL/dw[c, tap] at part[row, c * KKMAX + tap], dL/db[c] at part[row, C * KKMAX + c]
    (row = n * num_tiles + tile; identity channels write nothing)."""
    t = tl.program_id(0)
    row = tl.program_id(2).to(tl.int64) * tl.num_programs(0) + t
    n = tl.program_id(2).to(tl.int64)
    is1, is3, c0, cend, k, d = _group_of(tl.program_id(1), NB1, NB2, c1, c2, C, K1, D1, K2, D2, BLOCK_C)
    c = c0 + tl.arange(0, BLOCK_C)
    cm = c < cend
    o = tl.arange(0, TILE_H * TILE_W)
    gh = (t // TILES_W) * TILE_H + o // TILE_W
    gw = (t % TILES_W) * TILE_W + o % TILE_W
    om = (gh < H) & (gw < W)
    HW = H * W
    cbase = n * C * HW + c[:, None] * HW
    go = tl.load(go_ptr + cbase + (gh * W + gw)[None, :], mask=cm[:, None] & om[None, :], other=0.0).to(ACC)
    hk = (k - 1) // 2
    KK = k * k
    c12 = c1 + c2
    gx = tl.zeros([BLOCK_C, TILE_H * TILE_W], dtype=ACC)
    prow = part_ptr + row * (C * (KKMAX + 1))
    wmask = cm & ((c < c1) | (c >= c12))
    for tap in range(KK):
        dh = (tap // k - hk) * d
        dw = (tap % k - hk) * d
        wt = _group_w(w1_ptr, w2_ptr, c, cm, c1, c12, KK, tap).to(ACC)
        # input gradient: gx[p] += w[tap] * go[p - off]
        sh = gh - dh
        sw = gw - dw
        m = om & (sh >= 0) & (sh < H) & (sw >= 0) & (sw < W)
        g = tl.load(go_ptr + cbase + (sh * W + sw)[None, :], mask=cm[:, None] & m[None, :], other=0.0)
        gx += g.to(ACC) * wt[:, None]
        # weight gradient over this tile: sum_p go[p] * x[p + off]
        sh = gh + dh
        sw = gw + dw
        m = om & (sh >= 0) & (sh < H) & (sw >= 0) & (sw < W)
        x = tl.load(x_ptr + cbase + (sh * W + sw)[None, :], mask=cm[:, None] & m[None, :], other=0.0)
        tl.store(prow + c * KKMAX + tap, tl.sum(go * x.to(ACC), axis=1), mask=wmask)
    tl.store(prow + C * KKMAX + c, tl.sum(go, axis=1), mask=wmask)
    tl.store(gx_ptr + cbase + (gh * W + gw)[None, :], gx.to(gx_ptr.dtype.element_ty), mask=cm[:, None] & om[None, :])
