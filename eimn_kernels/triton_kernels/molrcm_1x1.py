"""Triton GEMM kernels of the MOLRCM 1x1 convolutions (proj_qv, gate_out), forward and backward.

Layout: contiguous NCHW, so one image is a (C, H*W) matrix. Each program owns one image n and a
tile of BLOCK_P pixels and all channels (padded to a power of two >= 16 for tl.dot, masked), so
the whole chain of each op runs in registers: (Cout x C) @ (C x BLOCK_P) with fused epilogues.
Backward programs loop over TPP pixel tiles of one image, sum their weight/bias gradients in
registers and write them to one row of a partial buffer (reduced afterwards in fixed order:
deterministic, no atomics). fp32 dots use input_precision PREC ('ieee' by default: exact but FMA-based,
register-hungry at C = 64; see molrcm_config.py).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .molrcm_common import gelu, gelu_grad, sigmoid


@triton.jit
def _load_img(ptr, base, c, cm, p, pm, HW):
    """[BLOCK_C, BLOCK_P] block of one image (zeros outside the channel / pixel masks)."""
    return tl.load(ptr + base + c[:, None] * HW + p[None, :], mask=cm[:, None] & pm[None, :], other=0.0)


@triton.jit
def _load_w(ptr, co, com, ci, cim, CIN, TRANS: tl.constexpr):
    """Weight (Cout, Cin) as a [BLOCK_CO, BLOCK_CI] block, or its transpose if TRANS."""
    # One return after a static if/else: Triton 3.6 rejects two returns of different shapes.
    if TRANS:
        w = tl.load(ptr + co[None, :] * CIN + ci[:, None], mask=com[None, :] & cim[:, None], other=0.0)
    else:
        w = tl.load(ptr + co[:, None] * CIN + ci[None, :], mask=com[:, None] & cim[None, :], other=0.0)
    return w


@triton.jit
def _store_part(ptr, c, cm, k, km, KD, vals):
    """Write a [BLOCK_C, BLOCK_K] partial block at ptr + c * KD + k."""
    tl.store(ptr + c[:, None] * KD + k[None, :], vals, mask=cm[:, None] & km[None, :])


@triton.jit
def proj_qv_fwd_kernel(x_ptr, wq_ptr, bq_ptr, wv_ptr, bv_ptr, q_ptr, v_ptr, CIN, CQ, CV, HW,
                       BLOCK_CI: tl.constexpr, BLOCK_CQ: tl.constexpr, BLOCK_CV: tl.constexpr,
                       BLOCK_P: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
    """q = GELU(Wq x + bq), v = Wv x + bv for one pixel tile of image program_id(1); x read once."""
    n = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < HW
    ci = tl.arange(0, BLOCK_CI)
    cim = ci < CIN
    x = _load_img(x_ptr, n * CIN * HW, ci, cim, p, pm, HW)
    dt = x.dtype
    cq = tl.arange(0, BLOCK_CQ)
    cqm = cq < CQ
    zq = tl.dot(_load_w(wq_ptr, cq, cqm, ci, cim, CIN, False), x, input_precision=PREC, out_dtype=ACC)
    zq += tl.load(bq_ptr + cq, mask=cqm, other=0.0).to(ACC)[:, None]
    tl.store(q_ptr + n * CQ * HW + cq[:, None] * HW + p[None, :], gelu(zq).to(dt),
             mask=cqm[:, None] & pm[None, :])
    cv = tl.arange(0, BLOCK_CV)
    cvm = cv < CV
    zv = tl.dot(_load_w(wv_ptr, cv, cvm, ci, cim, CIN, False), x, input_precision=PREC, out_dtype=ACC)
    zv += tl.load(bv_ptr + cv, mask=cvm, other=0.0).to(ACC)[:, None]
    tl.store(v_ptr + n * CV * HW + cv[:, None] * HW + p[None, :], zv.to(dt), mask=cvm[:, None] & pm[None, :])


@triton.jit
def proj_qv_bwd_kernel(gq_ptr, gv_ptr, x_ptr, wq_ptr, bq_ptr, wv_ptr, gx_ptr, part_ptr, CIN, CQ, CV, HW, TPP,
                       BLOCK_CI: tl.constexpr, BLOCK_CQ: tl.constexpr, BLOCK_CV: tl.constexpr,
                       BLOCK_P: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
    """gx = Wq^T (gq * GELU'(zq)) + Wv^T gv for TPP consecutive pixel tiles of image program_id(1);
    their summed partial [gWq | gbq | gWv | gbv] goes to row (n * num_programs(0) + program_id(0))
    of part (fp32/fp64)."""
    n = tl.program_id(1).to(tl.int64)
    row = n * tl.num_programs(0) + tl.program_id(0)
    ci = tl.arange(0, BLOCK_CI)
    cim = ci < CIN
    cq = tl.arange(0, BLOCK_CQ)
    cqm = cq < CQ
    cv = tl.arange(0, BLOCK_CV)
    cvm = cv < CV
    wq = _load_w(wq_ptr, cq, cqm, ci, cim, CIN, False)
    wq_t = _load_w(wq_ptr, cq, cqm, ci, cim, CIN, True)
    wv_t = _load_w(wv_ptr, cv, cvm, ci, cim, CIN, True)
    bq = tl.load(bq_ptr + cq, mask=cqm, other=0.0).to(ACC)
    gwq = tl.zeros([BLOCK_CQ, BLOCK_CI], dtype=ACC)
    gwv = tl.zeros([BLOCK_CV, BLOCK_CI], dtype=ACC)
    gbq = tl.zeros([BLOCK_CQ], dtype=ACC)
    gbv = tl.zeros([BLOCK_CV], dtype=ACC)
    for i in range(TPP):
        p = (tl.program_id(0) * TPP + i) * BLOCK_P + tl.arange(0, BLOCK_P)
        pm = p < HW
        x = _load_img(x_ptr, n * CIN * HW, ci, cim, p, pm, HW)
        dt = x.dtype
        zq = tl.dot(wq, x, input_precision=PREC, out_dtype=ACC) + bq[:, None]
        gzq = _load_img(gq_ptr, n * CQ * HW, cq, cqm, p, pm, HW).to(ACC) * gelu_grad(zq)
        gzq_d = gzq.to(dt)
        gv = _load_img(gv_ptr, n * CV * HW, cv, cvm, p, pm, HW)
        gx = tl.dot(wq_t, gzq_d, input_precision=PREC, out_dtype=ACC)
        gx = tl.dot(wv_t, gv, acc=gx, input_precision=PREC, out_dtype=ACC)
        tl.store(gx_ptr + n * CIN * HW + ci[:, None] * HW + p[None, :], gx.to(dt), mask=cim[:, None] & pm[None, :])
        xt = tl.trans(x)
        gwq = tl.dot(gzq_d, xt, acc=gwq, input_precision=PREC, out_dtype=ACC)
        gwv = tl.dot(gv, xt, acc=gwv, input_precision=PREC, out_dtype=ACC)
        gbq += tl.sum(gzq, axis=1)
        gbv += tl.sum(gv.to(ACC), axis=1)
    prow = part_ptr + row * (CQ * CIN + CQ + CV * CIN + CV)
    _store_part(prow, cq, cqm, ci, cim, CIN, gwq)
    tl.store(prow + CQ * CIN + cq, gbq, mask=cqm)
    prow += CQ * CIN + CQ
    _store_part(prow, cv, cvm, ci, cim, CIN, gwv)
    tl.store(prow + CV * CIN + cv, gbv, mask=cvm)


@triton.jit
def gate_out_fwd_kernel(y_ptr, v_ptr, wf_ptr, bf_ptr, wo_ptr, bo_ptr, out_ptr, C, CO, HW,
                        BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_P: tl.constexpr,
                        ACC: tl.constexpr, PREC: tl.constexpr):
    """out = Wo (SiLU(Wf y + bf) * v) + bo for one pixel tile: both GEMMs in one program, the gate
    computed in the epilogue of the first and fed (in the input dtype) to the second."""
    n = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < HW
    c = tl.arange(0, BLOCK_C)
    cm = c < C
    y = _load_img(y_ptr, n * C * HW, c, cm, p, pm, HW)
    dt = y.dtype
    zf = tl.dot(_load_w(wf_ptr, c, cm, c, cm, C, False), y, input_precision=PREC, out_dtype=ACC)
    zf += tl.load(bf_ptr + c, mask=cm, other=0.0).to(ACC)[:, None]
    g = (zf * sigmoid(zf) * _load_img(v_ptr, n * C * HW, c, cm, p, pm, HW).to(ACC)).to(dt)
    co = tl.arange(0, BLOCK_CO)
    com = co < CO
    o = tl.dot(_load_w(wo_ptr, co, com, c, cm, C, False), g, input_precision=PREC, out_dtype=ACC)
    o += tl.load(bo_ptr + co, mask=com, other=0.0).to(ACC)[:, None]
    tl.store(out_ptr + n * CO * HW + co[:, None] * HW + p[None, :], o.to(dt), mask=com[:, None] & pm[None, :])


@triton.jit
def gate_out_bwd_kernel(go_ptr, y_ptr, v_ptr, wf_ptr, bf_ptr, wo_ptr, gy_ptr, gv_ptr, part_ptr, C, CO, HW, TPP,
                        BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_P: tl.constexpr,
                        ACC: tl.constexpr, PREC: tl.constexpr):
    """gy, gv of gate_out for TPP consecutive pixel tiles of image program_id(1) (recomputing
    zf = Wf y + bf); their summed partial [gWf | gbf | gWo | gbo] goes to row
    (n * num_programs(0) + program_id(0)) of part."""
    n = tl.program_id(1).to(tl.int64)
    row = n * tl.num_programs(0) + tl.program_id(0)
    c = tl.arange(0, BLOCK_C)
    cm = c < C
    co = tl.arange(0, BLOCK_CO)
    com = co < CO
    wf = _load_w(wf_ptr, c, cm, c, cm, C, False)
    wf_t = _load_w(wf_ptr, c, cm, c, cm, C, True)
    wo_t = _load_w(wo_ptr, co, com, c, cm, C, True)
    bf = tl.load(bf_ptr + c, mask=cm, other=0.0).to(ACC)
    gwf = tl.zeros([BLOCK_C, BLOCK_C], dtype=ACC)
    gwo = tl.zeros([BLOCK_CO, BLOCK_C], dtype=ACC)
    gbf = tl.zeros([BLOCK_C], dtype=ACC)
    gbo = tl.zeros([BLOCK_CO], dtype=ACC)
    for i in range(TPP):
        p = (tl.program_id(0) * TPP + i) * BLOCK_P + tl.arange(0, BLOCK_P)
        pm = p < HW
        y = _load_img(y_ptr, n * C * HW, c, cm, p, pm, HW)
        dt = y.dtype
        v = _load_img(v_ptr, n * C * HW, c, cm, p, pm, HW).to(ACC)
        go = _load_img(go_ptr, n * CO * HW, co, com, p, pm, HW)
        zf = tl.dot(wf, y, input_precision=PREC, out_dtype=ACC) + bf[:, None]
        sg = sigmoid(zf)
        s = zf * sg
        gg = tl.dot(wo_t, go, input_precision=PREC, out_dtype=ACC)
        tl.store(gv_ptr + n * C * HW + c[:, None] * HW + p[None, :], (gg * s).to(dt), mask=cm[:, None] & pm[None, :])
        gz = gg * v * (sg * (1.0 + zf * (1.0 - sg)))
        gz_d = gz.to(dt)
        gy = tl.dot(wf_t, gz_d, input_precision=PREC, out_dtype=ACC)
        tl.store(gy_ptr + n * C * HW + c[:, None] * HW + p[None, :], gy.to(dt), mask=cm[:, None] & pm[None, :])
        gwf = tl.dot(gz_d, tl.trans(y), acc=gwf, input_precision=PREC, out_dtype=ACC)
        gwo = tl.dot(go, tl.trans((s * v).to(dt)), acc=gwo, input_precision=PREC, out_dtype=ACC)
        gbf += tl.sum(gz, axis=1)
        gbo += tl.sum(go.to(ACC), axis=1)
    prow = part_ptr + row * (C * C + C + CO * C + CO)
    _store_part(prow, c, cm, c, cm, C, gwf)
    tl.store(prow + C * C + c, gbf, mask=cm)
    prow += C * C + C
    _store_part(prow, co, com, c, cm, C, gwo)
    tl.store(prow + CO * C + co, gbo, mask=com)
