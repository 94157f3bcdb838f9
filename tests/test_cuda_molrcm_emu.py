"""CPU emulation of the MOLRCM CUDA kernels (csrc/cuda/molrcm_kernels.cu) against eimn_kernels.reference.

No GPU needed: tests/emu/molrcm_emu.cpp compiles the .cu with g++ on top of tests/emu/cuda_emu.h (each thread
block runs as 256 real threads with barriers for __syncthreads and warp shuffles), so the tiling, halo and
shared-memory index math, the per-block weight-gradient partials and their reduction run as written for the GPU.
Small shapes (each emulated block spawns 256 threads). The 1x1 ops are checked by mirroring the ATen wrapper's
GEMM composition (molrcm_cuda.cpp) in torch around the emulated epilogue kernels.
Set EIMN_EMU_ASAN=1 to build with AddressSanitizer (out-of-bounds shared/global accesses); python must then
run with LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0.
"""
import ctypes
import shutil

import pytest
import torch
import torch.nn.functional as F

from _emu_build import REPO, build_emu
from eimn_kernels import reference

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to build the CPU emulation")


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    lib = build_emu(REPO / "tests" / "emu" / "molrcm_emu.cpp", tmp_path_factory.mktemp("emu") / "molrcm_emu.so")
    yield lib
    lib.emu_set_smem_limit(48 * 1024)


def _p(t):
    return ctypes.c_void_p(t.data_ptr() if t.numel() else 0)


def _arr(ts):
    return (ctypes.c_void_p * len(ts))(*[_p(t).value for t in ts])


def _dims(N, C, H, W, c1, c2, ks):
    return (ctypes.c_int64 * 6)(N, C, H, W, c1, c2), (ctypes.c_int * 6)(*ks)


def emu_dw_mix(lib, q, w0, b0, w1, b1, w2, b2, c1, c2, d0, d1, d2):
    N, C, H, W = q.shape
    dims, ks = _dims(N, C, H, W, c1, c2, (w0.shape[-1], w1.shape[-1], w2.shape[-1], d0, d1, d2))
    y = torch.empty_like(q)
    info = (ctypes.c_int * 3)()
    rc = lib.emu_dw_mix_forward(0 if q.dtype == torch.float32 else 1, dims, ks, _arr([q, w0, b0, w1, b1, w2, b2]),
                                _p(y), info)
    assert rc == 0, f"emu forward failed ({rc}), tile {list(info)}"
    return y, tuple(info)


def emu_dw_mix_backward(lib, gy, q, w0, b0, w1, b1, w2, b2, c1, c2, d0, d1, d2):
    N, C, H, W = q.shape
    dims, ks = _dims(N, C, H, W, c1, c2, (w0.shape[-1], w1.shape[-1], w2.shape[-1], d0, d1, d2))
    outs = [torch.empty_like(t) for t in (q, w0, b0, w1, b1, w2, b2)]
    info = (ctypes.c_int * 3)()
    rc = lib.emu_dw_mix_backward(0 if q.dtype == torch.float32 else 1, dims, ks, _arr([gy, q, w0, b0, w1, w2]),
                                 _arr(outs), info)
    assert rc == 0, f"emu backward failed ({rc}), tile {list(info)}"
    return outs, tuple(info)


def _amax(t):
    return t.abs().max().item() if t.numel() else 0.0


def _dw_inputs(N, C, H, W, c1, c2, K0, K1, K2, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    c3 = C - c1 - c2
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return (r(N, C, H, W), r(C, 1, K0, K0) * 0.3, r(C), r(c1, 1, K1, K1) * 0.3, r(c1), r(c3, 1, K2, K2) * 0.3, r(c3))


# (N, C, H, W, c1, c2, K0, K1, K2, d0, d1, d2, smem_limit): smem_limit low -> small tiles, many halos across tiles
DW_CASES = [
    (1, 8, 9, 9, 3, 1, 5, 5, 7, 1, 2, 3, 48 * 1024),     # EIMN kernels / dilations, split 3/1/4
    (2, 5, 7, 9, 2, 0, 3, 5, 3, 2, 1, 2, 48 * 1024),     # odd sizes, batch 2, c2 = 0
    (1, 4, 1, 13, 0, 2, 5, 3, 5, 1, 1, 2, 48 * 1024),    # H = 1, c1 = 0
    (1, 3, 33, 20, 1, 1, 5, 5, 7, 1, 2, 3, 20 * 1024),   # forced small tiles (fp64: 16x8 fwd, 8x4 bwd)
    (1, 3, 13, 6, 2, 1, 3, 5, 1, 1, 1, 1, 8 * 1024),     # c3 = 0, W = 6
]


@pytest.mark.parametrize("case", DW_CASES, ids=[f"case{i}" for i in range(len(DW_CASES))])
def test_dw_mix_emu_vs_reference(emu, case):
    N, C, H, W, c1, c2, K0, K1, K2, d0, d1, d2, limit = case
    emu.emu_set_smem_limit(limit)
    try:
        x64 = [t.requires_grad_() for t in _dw_inputs(N, C, H, W, c1, c2, K0, K1, K2, torch.float64, seed=len(DW_CASES) + H)]
        ref = reference.dw_mix(*x64, c1, c2, d0, d1, d2)
        gy = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
        ref_grads = torch.autograd.grad(ref, x64, gy, allow_unused=True, materialize_grads=True)
        x64 = [t.detach() for t in x64]

        # float64 forward and backward: exact up to rounding
        y, tile_f = emu_dw_mix(emu, *x64, c1, c2, d0, d1, d2)
        scale = ref.abs().max().item()
        assert (y - ref).abs().max().item() <= 1e-12 * scale, f"fp64 forward, tile {tile_f}"
        grads, tile_b = emu_dw_mix_backward(emu, gy, *x64, c1, c2, d0, d1, d2)
        names = ["q", "w0", "b0", "w1", "b1", "w2", "b2"]
        for n, a, b in zip(names, grads, ref_grads):
            assert torch.isfinite(a).all(), f"grad {n}: non-finite (unwritten shared memory or partial?)"
            tol = 1e-11 * max(_amax(b), 1.0)
            assert _amax(a - b) <= tol, f"fp64 grad {n}: {_amax(a - b)} tile {tile_b}"

        if case is DW_CASES[0]:  # float32 instantiation once (emulation is slow): fwd <= 1e-5 rel
            x32 = [t.float() for t in x64]
            y32, _ = emu_dw_mix(emu, *x32, c1, c2, d0, d1, d2)
            assert (y32.double() - ref).abs().max().item() <= 1e-5 * scale
            g32, _ = emu_dw_mix_backward(emu, gy.float(), *x32, c1, c2, d0, d1, d2)
            for n, a, b in zip(names, g32, ref_grads):
                assert _amax(a.double() - b) <= 1e-4 * max(_amax(b), 1.0), f"fp32 grad {n}"
        if limit < 48 * 1024:
            assert tile_f[0] * tile_f[1] < 32 * 16 and tile_b[0] * tile_b[1] < 32 * 16, "small tiles expected"
    finally:
        emu.emu_set_smem_limit(48 * 1024)


def test_dw_mix_emu_deterministic(emu):
    """Two runs bitwise equal (fp32, 2x2 tiles of 8x8 per plane: cross-block partial reduction)."""
    x = _dw_inputs(1, 3, 9, 10, 1, 1, 5, 5, 7, torch.float32, seed=3)
    gy = torch.randn(1, 3, 9, 10)
    emu.emu_set_smem_limit(12 * 1024)
    try:
        a, _ = emu_dw_mix_backward(emu, gy, *x, 1, 1, 1, 2, 3)
        b, _ = emu_dw_mix_backward(emu, gy, *x, 1, 1, 1, 2, 3)
    finally:
        emu.emu_set_smem_limit(48 * 1024)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


# ---- 1x1 ops: the wrapper's GEMM composition (molrcm_cuda.cpp) mirrored in torch around emulated epilogues ----

def _proj_qv_forward(lib, x, wq, bq, wv, bv):
    N, C, H, W = x.shape
    Cq, Cv = wq.shape[0], wv.shape[0]
    t = torch.cat([wq, wv]).view(Cq + Cv, C) @ x.view(N, C, H * W)
    q, v = x.new_empty(N, Cq, H, W), x.new_empty(N, Cv, H, W)
    assert lib.emu_proj_qv_epilogue_forward(1, N, Cq, Cv, H * W, _p(t.contiguous()), _p(bq), _p(bv), _p(q), _p(v)) == 0
    return q, v


def _proj_qv_backward(lib, gq, gv, x, wq, bq, wv, bv):
    N, C, H, W = x.shape
    Cq, Cv = wq.shape[0], wv.shape[0]
    X = x.view(N, C, H * W)
    tq = (wq.view(Cq, C) @ X).contiguous()
    G = x.new_empty(N, Cq + Cv, H * W)
    assert lib.emu_proj_qv_epilogue_backward(1, N, Cq, Cv, H * W, _p(tq), _p(bq), _p(gq), _p(gv), _p(G)) == 0
    Wcat = torch.cat([wq, wv]).view(Cq + Cv, C)
    gx = torch.bmm(Wcat.t().unsqueeze(0).expand(N, C, Cq + Cv).contiguous(), G).view(N, C, H, W)
    gW = torch.bmm(G, X.transpose(1, 2)).sum(0)
    gb = G.sum((0, 2))
    return gx, gW[:Cq].reshape(wq.shape), gb[:Cq], gW[Cq:].reshape(wv.shape), gb[Cq:]


def _gate_out_forward(lib, y, v, wf, bf, wo, bo):
    N, C, H, W = y.shape
    Co = wo.shape[0]
    f = (wf.view(C, C) @ y.view(N, C, H * W)).contiguous()
    s = y.new_empty(N, C, H * W)
    assert lib.emu_gate_out_epilogue_gate(1, N, C, H * W, _p(f), _p(bf), _p(v), _p(s)) == 0
    o = (wo.view(Co, C) @ s).contiguous()
    out = y.new_empty(N, Co, H, W)
    assert lib.emu_bias_epilogue(1, N, Co, H * W, _p(o), _p(bo), _p(out)) == 0
    return out


def _gate_out_backward(lib, go, y, v, wf, bf, wo, bo):
    N, C, H, W = y.shape
    Co = wo.shape[0]
    Y, GO = y.view(N, C, H * W), go.view(N, Co, H * W)
    f = (wf.view(C, C) @ Y).contiguous()
    gs = (wo.view(Co, C).t() @ GO).contiguous()
    s, gv, gf = (y.new_empty(N, C, H * W) for _ in range(3))
    assert lib.emu_gate_out_epilogue_backward(1, N, C, H * W, _p(f), _p(bf), _p(v), _p(gs), _p(s), _p(gv), _p(gf)) == 0
    gy = (wf.view(C, C).t() @ gf).view(N, C, H, W)
    return (gy, gv.view_as(v), torch.bmm(gf, Y.transpose(1, 2)).sum(0).reshape(wf.shape), gf.sum((0, 2)),
            torch.bmm(GO, s.transpose(1, 2)).sum(0).reshape(wo.shape), GO.sum((0, 2)))


def _close(a, b, tol=1e-11):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert (a - b).abs().max().item() <= tol * max(b.abs().max().item(), 1.0)


def test_proj_qv_emu_vs_reference(emu):
    g = torch.Generator().manual_seed(1)
    N, C, Cq, Cv, H, W = 2, 5, 4, 3, 3, 7
    ins = [torch.randn(N, C, H, W, generator=g, dtype=torch.float64), torch.randn(Cq, C, 1, 1, generator=g, dtype=torch.float64),
           torch.randn(Cq, generator=g, dtype=torch.float64), torch.randn(Cv, C, 1, 1, generator=g, dtype=torch.float64),
           torch.randn(Cv, generator=g, dtype=torch.float64)]
    ins = [t.requires_grad_() for t in ins]
    q, v = reference.proj_qv(*ins)
    gq, gv = torch.randn_like(q), torch.randn_like(v)
    ref_grads = torch.autograd.grad((q, v), ins, (gq, gv))
    det = [t.detach() for t in ins]
    eq, ev = _proj_qv_forward(emu, *det)
    _close(eq, q.detach())
    _close(ev, v.detach())
    for a, b in zip(_proj_qv_backward(emu, gq, gv, *det), ref_grads):
        _close(a, b)


def test_gate_out_emu_vs_reference(emu):
    g = torch.Generator().manual_seed(2)
    N, C, Co, H, W = 3, 4, 6, 5, 2
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    ins = [t.requires_grad_() for t in (r(N, C, H, W), r(N, C, H, W), r(C, C, 1, 1), r(C), r(Co, C, 1, 1), r(Co))]
    out = reference.gate_out(*ins)
    go = torch.randn_like(out)
    ref_grads = torch.autograd.grad(out, ins, go)
    det = [t.detach() for t in ins]
    _close(_gate_out_forward(emu, *det), out.detach())
    for a, b in zip(_gate_out_backward(emu, go, *det), ref_grads):
        _close(a, b)


def test_epilogues_fp32(emu):
    """float32 instantiations of the epilogues (fp32 math) vs torch."""
    N, C, HW = 2, 3, 5
    f, v, gs = torch.randn(N, C, HW), torch.randn(N, C, HW), torch.randn(N, C, HW)
    bf = torch.randn(C)
    s, gv, gf = (torch.empty(N, C, HW) for _ in range(3))
    assert emu.emu_gate_out_epilogue_backward(0, N, C, HW, _p(f), _p(bf), _p(v), _p(gs), _p(s), _p(gv), _p(gf)) == 0
    z = (f + bf[:, None]).requires_grad_()
    ref_s = F.silu(z) * v
    (ref_gz,) = torch.autograd.grad(ref_s, z, gs)
    torch.testing.assert_close(s, ref_s.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gv, gs * F.silu(z.detach()), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gf, ref_gz, rtol=1e-5, atol=1e-6)
