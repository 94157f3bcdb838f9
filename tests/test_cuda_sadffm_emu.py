"""CPU emulation of the SADFFM CUDA kernels (csrc/cuda/sadffm_{gated,dffm}_kernels.cu) against eimn_kernels.reference.

No GPU needed: the test copies the .cu with its CUDA-only syntax rewritten (`k<<<g, b, s, st>>>(` ->
`emu::launch3(k, g, b, s, st)(`, the extern/static __shared__ arrays -> per-block emulated buffers) and compiles it with
g++ on top of tests/emu/sadffm_emu.h (each block runs as real threads with barriers for __syncthreads and
__shfl_down_sync). So the tiling/halo index math, shared-memory layouts, per-block partials and their fixed-order
reductions run as written for the GPU. The 1x1 GEMMs of the ATen wrapper (csrc/cuda/sadffm_cuda.cpp) are mirrored in
torch around the emulated kernels. Small shapes only (every emulated block spawns its threads).
Set EIMN_EMU_ASAN=1 to build with AddressSanitizer; python must then run with
LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0.
"""
import ctypes
import os
import pathlib
import re
import shutil
import subprocess

import pytest
import torch

from eimn_kernels import reference

REPO = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to build the CPU emulation")


def _transform(src: str) -> str:
    src = src.replace("extern __shared__ __align__(16) unsigned char sadffm_smem[];",
                      "#define sadffm_smem (emu::cur_smem)")
    src, n = re.subn(r"__shared__\s+(\w+)\s+(\w+)((?:\[[^\]]+\])+);",
                     r"\1 (&\2)\3 = *reinterpret_cast<\1 (*)\3>(emu::block_static_smem());", src)
    assert n == 1, "expected one static __shared__ array"
    src, n = re.subn(r"([\w:]+(?:<[\w:]+>)?)<<<(.*?)>>>\(", r"emu::launch3(\1, \2)(", src, flags=re.S)
    assert n >= 8, n
    assert "<<<" not in src and "__shared__" not in src
    return src


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    d = tmp_path_factory.mktemp("sadffm_emu")
    cuda = REPO / "csrc" / "cuda"
    # one translation unit: the shared header inlined first, then both kernel files without their include of it
    parts = [(cuda / "sadffm_common.cuh").read_text()] + [
        (cuda / f).read_text().replace('#include "cuda/sadffm_common.cuh"', "")
        for f in ("sadffm_gated_kernels.cu", "sadffm_dffm_kernels.cu")]
    (d / "sadffm_kernels_emu.inc").write_text(_transform("\n".join(parts)))
    out = d / "sadffm_emu.so"
    emu_dir = REPO / "tests" / "emu"
    flags = ["-O1", "-g"]
    if os.environ.get("EIMN_EMU_ASAN") == "1":  # shared memory is an exactly-sized vector: overflows are reported
        flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    cmd = ["g++", "-std=c++17", *flags, "-w", "-fPIC", "-shared", "-pthread", "-I", str(d),
           "-I", str(emu_dir / "sadffm_stub"), "-I", str(emu_dir), "-I", str(REPO / "csrc" / "cuda"),
           "-I", str(REPO / "csrc"), "-I", str(REPO / "csrc" / "common"), str(emu_dir / "sadffm_emu.cpp"),
           "-o", str(out)]
    subprocess.run(cmd, check=True)
    lib = ctypes.CDLL(str(out))
    lib.emu_dffm_forward.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double,
                                     ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
    lib.emu_dffm_backward.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_double, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_int, ctypes.c_int64]
    yield lib


def _p(t):
    return ctypes.c_void_p(t.data_ptr() if t.numel() else 0)


def _dt(t):
    return 0 if t.dtype == torch.float32 else 1


def _acc(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _conv1x1(x, w):  # the wrapper's sadffm_conv1x1: W x without bias, (N, Cout, HW)
    N, C, H, W = x.shape
    return torch.matmul(w.reshape(w.shape[0], C), x.reshape(N, C, H * W)).contiguous()


def emu_gated(lib, x, w_in, b_in, w_dw, b_dw):
    N, C, H, W = x.shape
    hid, K = w_in.shape[0] // 2, w_dw.shape[-1]
    tg = _conv1x1(x, w_in)
    h = torch.empty(N, hid, H, W, dtype=x.dtype)
    assert lib.emu_gated_forward(_dt(x), _p(tg), _p(b_in), _p(w_dw), _p(b_dw), _p(h), N, hid, H, W, K) == 0
    return h


def emu_gated_backward(lib, gh, x, w_in, b_in, w_dw, b_dw):
    N, C, H, W = x.shape
    hid, K = w_in.shape[0] // 2, w_dw.shape[-1]
    tg = _conv1x1(x, w_in)
    acc = _acc(x)
    grad_t = torch.empty(N, 2 * hid, H * W, dtype=acc)
    gs = torch.empty(2 * hid, K * K + 2, dtype=acc)
    assert lib.emu_gated_backward(_dt(x), _p(gh.contiguous()), _p(tg), _p(b_in), _p(w_dw), _p(b_dw), _p(grad_t),
                                  _p(gs), N, hid, H, W, K) == 0
    w2 = w_in.reshape(2 * hid, C).to(acc)
    gx = torch.matmul(w2.t(), grad_t).reshape(N, C, H, W).to(x.dtype)
    gw_in = torch.matmul(grad_t, x.reshape(N, C, H * W).to(acc).transpose(1, 2)).sum(0).reshape(2 * hid, C, 1, 1)
    return gx, gw_in, gs[:, K * K + 1], gs[:, :K * K].reshape(2 * hid, 1, K, K), gs[:, K * K]


def _gated_inputs(N, C, hid, H, W, K, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    return r(N, C, H, W), r(2 * hid, C, 1, 1) * 0.5, r(2 * hid) * 0.1, r(2 * hid, 1, K, K) * 0.3, r(2 * hid) * 0.1


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


GATED_CASES = [(1, 3, 2, 7, 9, 3), (3, 2, 1, 33, 20, 5), (1, 2, 1, 1, 40, 3), (1, 2, 1, 17, 1, 7), (1, 2, 1, 18, 35, 1)]


@pytest.mark.parametrize("N,C,hid,H,W,K", GATED_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gated_dwconv(emu, N, C, hid, H, W, K, dtype):
    x, w_in, b_in, w_dw, b_dw = _gated_inputs(N, C, hid, H, W, K, dtype)
    params = [t.clone().requires_grad_(True) for t in (x, w_in, b_in, w_dw, b_dw)]
    ref = reference.gated_dwconv(*params)
    got = emu_gated(emu, x, w_in, b_in, w_dw, b_dw)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert _rel(got, ref.detach()) <= tol
    gh = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    ref_grads = torch.autograd.grad(ref, params, gh)
    got_grads = emu_gated_backward(emu, gh, x, w_in, b_in, w_dw, b_dw)
    for name, a, b in zip(("x", "w_in", "b_in", "w_dw", "b_dw"), got_grads, ref_grads):
        assert a.shape == b.shape, name
        assert _rel(a.to(dtype), b) <= (1e-4 if dtype == torch.float32 else 1e-10), name


def _dffm_inputs(N, hid, C, R, H, W, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    return (r(N, hid, H, W), r(C, hid, 1, 1) * 0.5, r(C) * 0.1, 1 + 0.1 * r(C), 0.1 * r(C), r(R, C, 1, 1) * 0.3,
            r(R) * 0.1, r(R, C, 1, 1) * 0.3, r(R) * 0.1, r(C, R, 1, 1) * 0.3, r(C) * 0.1, r(1, 2 * R, 1, 1) * 0.3,
            r(1) * 0.1)


DFFM_CASES = [(1, 3, 4, 2, 7, 9), (2, 2, 5, 3, 13, 11), (1, 2, 3, 1, 1, 1), (3, 2, 2, 2, 9, 15)]


@pytest.mark.parametrize("N,hid,C,R,H,W", DFFM_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dffm_out(emu, N, hid, C, R, H, W, dtype):
    eps = 1e-6
    ins = _dffm_inputs(N, hid, C, R, H, W, dtype)
    params = [t.clone().requires_grad_(True) for t in ins]
    ref = reference.dffm_out(*params, eps)
    h, w_out = ins[0], ins[1]
    yg = _conv1x1(h, w_out)
    wts = (ctypes.c_void_p * 11)(*[t.data_ptr() for t in ins[2:]])
    out = torch.empty(N, C, H, W, dtype=dtype)
    HW = H * W
    assert emu.emu_dffm_forward(_dt(h), yg.data_ptr(), wts, eps, out.data_ptr(), N, C, R, HW) == 0
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert _rel(out, ref.detach()) <= tol
    go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    ref_grads = torch.autograd.grad(ref, params, go)
    acc = _acc(h)
    grad_y = torch.empty(N, C, HW, dtype=acc)
    total = 2 * C + R * C + 2 * R + 1 + C + R + R * C + R + C * R + C
    gs = torch.empty(total, dtype=acc)
    assert emu.emu_dffm_backward(_dt(h), go.data_ptr(), yg.data_ptr(), wts, eps, grad_y.data_ptr(), gs.data_ptr(),
                                 N, C, R, HW) == 0
    # mirror of the wrapper: grad_h, grad_w_out by GEMM; the small gradients unpacked by SadffmDffmGradLayout
    grad_h = torch.matmul(w_out.reshape(C, hid).to(acc).t(), grad_y).reshape(N, hid, H, W)
    grad_w_out = torch.matmul(grad_y, h.reshape(N, hid, HW).to(acc).transpose(1, 2)).sum(0).reshape(C, hid, 1, 1)
    o = {"ln_w": 0, "ln_b": C, "w_lr": 2 * C, "b_lr": 2 * C + R * C}
    o["w_se_l"] = o["b_lr"] + R
    o["b_se"] = o["w_se_l"] + R
    o["b_out"] = o["b_se"] + 1
    o["w_se_g"] = o["b_out"] + C
    o["w_gr"] = o["w_se_g"] + R
    o["b_gr"] = o["w_gr"] + R * C
    o["w_ce"] = o["b_gr"] + R
    o["b_ce"] = o["w_ce"] + C * R
    assert o["b_ce"] + C == total
    take = lambda k, n, shape: gs[o[k]:o[k] + n].reshape(shape)
    got = [grad_h, grad_w_out, take("b_out", C, (C,)), take("ln_w", C, (C,)), take("ln_b", C, (C,)),
           take("w_gr", R * C, (R, C, 1, 1)), take("b_gr", R, (R,)), take("w_lr", R * C, (R, C, 1, 1)),
           take("b_lr", R, (R,)), take("w_ce", C * R, (C, R, 1, 1)), take("b_ce", C, (C,)),
           torch.cat([take("w_se_l", R, (R,)), take("w_se_g", R, (R,))]).reshape(1, 2 * R, 1, 1),
           take("b_se", 1, (1,))]
    names = ("h", "w_out", "b_out", "ln_w", "ln_b", "w_gr", "b_gr", "w_lr", "b_lr", "w_ce", "b_ce", "w_se", "b_se")
    for name, a, b in zip(names, got, ref_grads):
        assert a.shape == b.shape, name
        assert _rel(a.to(dtype), b) <= (1e-4 if dtype == torch.float32 else 1e-10), name
