"""Triton backend of the MOLRCM ops: dw_mix, proj_qv, gate_out (forward and backward).

Each function takes the arguments of the eimn_C schema of the same name (csrc/eimn_ops.cpp), in
that order; tensors are contiguous NCHW, all of one dtype (float32, float16, bfloat16 or float64)
and device (CUDA, or CPU under TRITON_INTERPRET=1). Outputs have the input dtype; accumulation is
fp32 (fp64 for fp64); weight gradients are reduced in fp32/fp64 in fixed order, then cast.
Kernels: molrcm_1x1.py (GEMMs), molrcm_dw.py (depthwise mixing); tunables: molrcm_config.py.
"""
from __future__ import annotations

import torch
import triton

from . import molrcm_config as cfg
from .molrcm_1x1 import gate_out_bwd_kernel, gate_out_fwd_kernel, proj_qv_bwd_kernel, proj_qv_fwd_kernel
from .molrcm_common import acc_dtype, acc_torch_dtype, dot_precision, pow2_block, reduce_rows
from .molrcm_dw import dw_conv_bwd_kernel, dw_conv_fwd_kernel, dw_mix_fwd_kernel

__all__ = ["dw_mix_forward", "dw_mix_backward", "proj_qv_forward", "proj_qv_backward",
           "gate_out_forward", "gate_out_backward"]

_T = torch.Tensor


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _tiles_per_program(tiles: int, n_images: int, device: torch.device) -> int:
    """Pixel tiles each backward GEMM program sums before writing its partial row: enough programs
    to fill the GPU (PROGRAMS_PER_SM_1X1 per SM), few partial rows (bounded memory)."""
    if cfg.interpreting():
        return cfg.TILES_PER_PROG_INTERP
    target = max(1, _num_sms(device) * cfg.PROGRAMS_PER_SM_1X1 // max(n_images, 1))
    return max(1, triton.cdiv(tiles, target))


def _split_part(red: _T, sizes: list[tuple[int, ...]]) -> list[_T]:
    """Cut a reduced flat partial vector into tensors of the given shapes (in order)."""
    out, off = [], 0
    for shape in sizes:
        k = 1
        for s in shape:
            k *= s
        out.append(red[off:off + k].view(shape))
        off += k
    return out


# ---------------------------------------------------------------- proj_qv

def proj_qv_forward(x: _T, wq: _T, bq: _T, wv: _T, bv: _T) -> tuple[_T, _T]:
    """x: (N, C, H, W); wq: (Cq, C, 1, 1), bq: (Cq,); wv: (Cv, C, 1, 1), bv: (Cv,) ->
    (q, v) = (GELU(Wq x + bq): (N, Cq, H, W), Wv x + bv: (N, Cv, H, W)), dtype of x."""
    N, C, H, W = x.shape
    CQ, CV, HW = wq.shape[0], wv.shape[0], H * W
    q = torch.empty((N, CQ, H, W), dtype=x.dtype, device=x.device)
    v = torch.empty((N, CV, H, W), dtype=x.dtype, device=x.device)
    bp, nw = cfg.gemm_config(x.dtype, backward=False)
    proj_qv_fwd_kernel[(triton.cdiv(HW, bp), N)](
        x, wq, bq, wv, bv, q, v, C, CQ, CV, HW,
        BLOCK_CI=pow2_block(C), BLOCK_CQ=pow2_block(CQ), BLOCK_CV=pow2_block(CV), BLOCK_P=bp,
        ACC=acc_dtype(x.dtype), PREC=dot_precision(x.dtype), num_warps=nw)
    return q, v


def proj_qv_backward(grad_q: _T, grad_v: _T, x: _T, wq: _T, bq: _T, wv: _T, bv: _T):
    """Gradients (gx, gwq, gbq, gwv, gbv) of proj_qv given grad_q: (N, Cq, H, W), grad_v: (N, Cv, H, W)."""
    N, C, H, W = x.shape
    CQ, CV, HW = wq.shape[0], wv.shape[0], H * W
    bp, nw = cfg.gemm_config(x.dtype, backward=True)
    tiles = triton.cdiv(HW, bp)
    tpp = _tiles_per_program(tiles, N, x.device)
    progs = triton.cdiv(tiles, tpp)
    gx = torch.empty_like(x)
    M = CQ * C + CQ + CV * C + CV
    part = torch.empty((N * progs, M), dtype=acc_torch_dtype(x.dtype), device=x.device)
    proj_qv_bwd_kernel[(progs, N)](
        grad_q, grad_v, x, wq, bq, wv, gx, part, C, CQ, CV, HW, tpp,
        BLOCK_CI=pow2_block(C), BLOCK_CQ=pow2_block(CQ), BLOCK_CV=pow2_block(CV), BLOCK_P=bp,
        ACC=acc_dtype(x.dtype), PREC=dot_precision(x.dtype), num_warps=nw)
    gwq, gbq, gwv, gbv = _split_part(reduce_rows(part, x.dtype), [(CQ, C, 1, 1), (CQ,), (CV, C, 1, 1), (CV,)])
    return gx, gwq, gbq, gwv, gbv


# ---------------------------------------------------------------- gate_out

def gate_out_forward(y: _T, v: _T, wf: _T, bf: _T, wo: _T, bo: _T) -> _T:
    """y, v: (N, C, H, W); wf: (C, C, 1, 1), bf: (C,); wo: (Co, C, 1, 1), bo: (Co,) ->
    Wo (SiLU(Wf y + bf) * v) + bo: (N, Co, H, W), dtype of y."""
    N, C, H, W = y.shape
    CO, HW = wo.shape[0], H * W
    out = torch.empty((N, CO, H, W), dtype=y.dtype, device=y.device)
    bp, nw = cfg.gemm_config(y.dtype, backward=False)
    gate_out_fwd_kernel[(triton.cdiv(HW, bp), N)](
        y, v, wf, bf, wo, bo, out, C, CO, HW,
        BLOCK_C=pow2_block(C), BLOCK_CO=pow2_block(CO), BLOCK_P=bp,
        ACC=acc_dtype(y.dtype), PREC=dot_precision(y.dtype), num_warps=nw)
    return out


def gate_out_backward(grad_out: _T, y: _T, v: _T, wf: _T, bf: _T, wo: _T, bo: _T):
    """Gradients (gy, gv, gwf, gbf, gwo, gbo) of gate_out given grad_out: (N, Co, H, W)."""
    N, C, H, W = y.shape
    CO, HW = wo.shape[0], H * W
    bp, nw = cfg.gemm_config(y.dtype, backward=True)
    tiles = triton.cdiv(HW, bp)
    tpp = _tiles_per_program(tiles, N, y.device)
    progs = triton.cdiv(tiles, tpp)
    gy, gv = torch.empty_like(y), torch.empty_like(v)
    M = C * C + C + CO * C + CO
    part = torch.empty((N * progs, M), dtype=acc_torch_dtype(y.dtype), device=y.device)
    gate_out_bwd_kernel[(progs, N)](
        grad_out, y, v, wf, bf, wo, gy, gv, part, C, CO, HW, tpp,
        BLOCK_C=pow2_block(C), BLOCK_CO=pow2_block(CO), BLOCK_P=bp,
        ACC=acc_dtype(y.dtype), PREC=dot_precision(y.dtype), num_warps=nw)
    gwf, gbf, gwo, gbo = _split_part(reduce_rows(part, y.dtype), [(C, C, 1, 1), (C,), (CO, C, 1, 1), (CO,)])
    return gy, gv, gwf, gbf, gwo, gbo


# ---------------------------------------------------------------- dw_mix

def _split_blocks(C: int, c1: int, c2: int, bc: int) -> tuple[int, int, int]:
    """Channel blocks of each group (blocks never straddle groups)."""
    return triton.cdiv(c1, bc), triton.cdiv(c2, bc), triton.cdiv(C - c1 - c2, bc)


def dw_mix_forward(q: _T, w0: _T, b0: _T, w1: _T, b1: _T, w2: _T, b2: _T,
                   c1: int, c2: int, d0: int, d1: int, d2: int) -> _T:
    """q: (N, C, H, W); w0: (C, 1, K0, K0), b0: (C,); w1: (c1, 1, K1, K1), b1: (c1,);
    w2: (C-c1-c2, 1, K2, K2), b2: (C-c1-c2,) -> y: (N, C, H, W) of dw_mix, dtype of q."""
    N, C, H, W = q.shape
    K0, K1, K2 = w0.shape[-1], w1.shape[-1], w2.shape[-1]
    th, tw, bc, be = cfg.dw_tile()
    nb1, nb2, nb3 = _split_blocks(C, c1, c2, bc)
    nbt = nb1 + nb2 + nb3
    tiles_w = triton.cdiv(W, tw)
    n_tiles = triton.cdiv(H, th) * tiles_w
    total = N * nbt * n_tiles
    y = torch.empty_like(q)
    if total == 0:
        return y
    rmax = max(d1 * (K1 - 1) // 2 if c1 > 0 else 0, d2 * (K2 - 1) // 2 if C - c1 - c2 > 0 else 0)
    slot = (th + 2 * rmax) * (tw + 2 * rmax)
    grid = total if cfg.interpreting() else min(total, _num_sms(q.device) * cfg.PROGRAMS_PER_SM)
    scratch = torch.empty(grid * bc * slot, dtype=acc_torch_dtype(q.dtype), device=q.device)
    dw_mix_fwd_kernel[(grid,)](
        q, w0, b0, w1, b1, w2, b2, y, scratch,
        C, H, W, c1, c2, K0, d0, K1, d1, K2, d2, nb1, nb2, nbt, tiles_w, n_tiles, total, slot,
        TILE_H=th, TILE_W=tw, BLOCK_C=bc, BLOCK_E=be, ACC=acc_dtype(q.dtype), num_warps=cfg.NUM_WARPS_DW)
    return y


def dw_mix_backward(grad_y: _T, q: _T, w0: _T, b0: _T, w1: _T, b1: _T, w2: _T, b2: _T,
                    c1: int, c2: int, d0: int, d1: int, d2: int):
    """Gradients (gq, gw0, gb0, gw1, gb1, gw2, gb2) of dw_mix given grad_y: (N, C, H, W)."""
    N, C, H, W = q.shape
    c3 = C - c1 - c2
    K0, K1, K2 = w0.shape[-1], w1.shape[-1], w2.shape[-1]
    th, tw, bc, _ = cfg.dw_tile()
    tiles_w = triton.cdiv(W, tw)
    n_tiles = triton.cdiv(H, th) * tiles_w
    acc_t, ACC = acc_torch_dtype(q.dtype), acc_dtype(q.dtype)
    common = dict(TILE_H=th, TILE_W=tw, BLOCK_C=bc, ACC=ACC, num_warps=cfg.NUM_WARPS_DW)
    # 1. r = DW0(q) + b0, kept in the accumulation dtype
    r = torch.empty(q.shape, dtype=acc_t, device=q.device)
    dw_conv_fwd_kernel[(n_tiles, triton.cdiv(C, bc), N)](q, w0, b0, r, C, H, W, K0, d0, tiles_w, **common)
    # 2. second convs (group split): gr = dL/dr, partial dL/dw1, dL/dw2, dL/db1, dL/db2
    nb1, nb2, nb3 = _split_blocks(C, c1, c2, bc)
    kkmax = max(K1 * K1 if c1 else 1, K2 * K2 if c3 else 1)
    gr = torch.empty(q.shape, dtype=acc_t, device=q.device)
    part = torch.zeros((N * n_tiles, C * (kkmax + 1)), dtype=acc_t, device=q.device)
    dw_conv_bwd_kernel[(n_tiles, nb1 + nb2 + nb3, N)](
        grad_y, r, w1, w2, gr, part, C, H, W, c1, c2, K1, d1, K2, d2, nb1, nb2, tiles_w, kkmax, **common)
    red = reduce_rows(part, q.dtype)
    gw = red[:C * kkmax].view(C, kkmax)
    gb = red[C * kkmax:]
    gw1 = gw[:c1, :K1 * K1].reshape(c1, 1, K1, K1).contiguous()
    gw2 = gw[c1 + c2:, :K2 * K2].reshape(c3, 1, K2, K2).contiguous()
    gb1, gb2 = gb[:c1].contiguous(), gb[c1 + c2:].contiguous()
    # 3. first conv: gq = dL/dq, partial dL/dw0, dL/db0 (all channels in group 1)
    gq = torch.empty_like(q)
    part0 = torch.empty((N * n_tiles, C * (K0 * K0 + 1)), dtype=acc_t, device=q.device)
    nb0 = triton.cdiv(C, bc)
    dw_conv_bwd_kernel[(n_tiles, nb0, N)](
        gr, q, w0, w0, gq, part0, C, H, W, C, 0, K0, d0, K0, d0, nb0, 0, tiles_w, K0 * K0, **common)
    red0 = reduce_rows(part0, q.dtype)
    gw0 = red0[:C * K0 * K0].view(C, 1, K0, K0)
    gb0 = red0[C * K0 * K0:]
    return gq, gw0, gb0, gw1, gb1, gw2, gb2
