"""Triton backend of the SADFFM ops (gated_dwconv, dffm_out) against eimn_kernels.reference.

Runs under TRITON_INTERPRET=1 on CPU (set by conftest.py without a GPU) on small shapes, plus a
GPU-free compile of every kernel to sm_90 PTX (in a subprocess started at import, so it overlaps
the interpreter tests)."""
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from eimn_kernels import reference
from eimn_kernels.ops.sadffm import dffm_out, gated_dwconv

tk = pytest.importorskip("eimn_kernels.triton_kernels.sadffm")

REPO = pathlib.Path(__file__).resolve().parents[1]
DEV = "cuda" if torch.cuda.is_available() else "cpu"
if DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)


def _start_ptx_compile():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "_sadffm_ptx.py")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


_PTX_PROC = _start_ptx_compile()


def _relerr(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _gated_args(N, C, H, W, hid, K, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, sc=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * sc).to(dtype).to(DEV)
    return [r(N, C, H, W), r(2 * hid, C, 1, 1, sc=C ** -0.5), r(2 * hid, sc=0.1), r(2 * hid, 1, K, K, sc=0.3),
            r(2 * hid, sc=0.1)]


def _dffm_args(N, hid, C, R, H, W, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, sc=1.0, o=0.0: (torch.randn(*s, generator=g, dtype=torch.float64) * sc + o).to(dtype).to(DEV)
    return [r(N, hid, H, W), r(C, hid, 1, 1, sc=hid ** -0.5), r(C, sc=0.1), r(C, sc=0.2, o=1.0), r(C, sc=0.1),
            r(R, C, 1, 1, sc=C ** -0.5), r(R, sc=0.1), r(R, C, 1, 1, sc=C ** -0.5), r(R, sc=0.1),
            r(C, R, 1, 1, sc=R ** -0.5), r(C, sc=0.1), r(1, 2 * R, 1, 1, sc=0.5), r(1, sc=0.1)]


def _ref_grads(fn, args, gout, *extra):
    ins = [a.detach().clone().requires_grad_() for a in args]
    out = fn(*ins, *extra)
    return out.detach(), torch.autograd.grad(out, ins, gout)


# (N, C, H, W, hid, K): hid not a power of two, C not a multiple of 16, H = 1, batch 3, K = 5; the last case
# has several pixel tiles, 3 channel blocks of the depthwise kernels, 2 output blocks of the 1x1 GEMM and a
# masked tail in the K loop of the dL/dx GEMM (block sizes in sadffm_config.py).
GATED_CASES = [(3, 12, 4, 5, 10, 3), (1, 8, 1, 6, 12, 5), (1, 20, 5, 13, 34, 3)]


@pytest.mark.parametrize("shape", GATED_CASES)
def test_gated_dwconv_fp32(shape):
    args = _gated_args(*shape)
    N, C, H, W, hid, K = shape
    gout = torch.randn(N, hid, H, W, generator=torch.Generator().manual_seed(2)).to(DEV)
    ref, rgrads = _ref_grads(reference.gated_dwconv, args, gout)
    out = tk.gated_dwconv_forward(*args)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert _relerr(out, ref) <= 1e-5
    grads = tk.gated_dwconv_backward(gout, *args)
    assert len(grads) == 5
    for name, g, rg in zip(("x", "w_in", "b_in", "w_dw", "b_dw"), grads, rgrads):
        assert g.shape == rg.shape and g.dtype == rg.dtype, name
        assert _relerr(g, rg) <= 1e-5, (name, _relerr(g, rg))
    if shape == GATED_CASES[1]:  # deterministic: bitwise equal on a second run
        again = tk.gated_dwconv_backward(gout, *args)
        assert all(torch.equal(a, b) for a, b in zip(grads, again))


# (N, hid, C, R, H, W): W = 1, 33x20 (11 pixel tiles), hid > DFFM_BH (masked K-loop tail), batch 3.
DFFM_CASES = [(2, 10, 12, 3, 7, 9), (3, 20, 8, 2, 5, 1), (1, 6, 8, 2, 33, 20), (1, 34, 20, 5, 9, 11)]
DFFM_NAMES = ("h", "w_out", "b_out", "ln_w", "ln_b", "w_gr", "b_gr", "w_lr", "b_lr", "w_ce", "b_ce", "w_se", "b_se")


@pytest.mark.parametrize("shape", DFFM_CASES)
def test_dffm_out_fp32(shape):
    args = _dffm_args(*shape)
    N, hid, C, R, H, W = shape
    gout = torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(3)).to(DEV)
    ref, rgrads = _ref_grads(reference.dffm_out, args, gout, 1e-6)
    out = tk.dffm_out_forward(*args, 1e-6)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert _relerr(out, ref) <= 1e-5
    grads = tk.dffm_out_backward(gout, *args, 1e-6)
    assert len(grads) == 13
    for name, g, rg in zip(DFFM_NAMES, grads, rgrads):
        assert g.shape == rg.shape and g.dtype == rg.dtype, name
        assert _relerr(g, rg) <= 1e-5, (name, _relerr(g, rg))
    if shape == DFFM_CASES[-1]:
        again = tk.dffm_out_backward(gout, *args, 1e-6)
        assert all(torch.equal(a, b) for a, b in zip(grads, again))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_forward(dtype):
    """Half inputs: outputs in the input dtype, close to the fp32 reference on the same (rounded) inputs."""
    tol = 1e-2 if dtype == torch.float16 else 4e-2
    a = _gated_args(1, 16, 5, 6, 24, 3, dtype=dtype)
    h = tk.gated_dwconv_forward(*a)
    assert h.dtype == dtype
    assert _relerr(h.float(), reference.gated_dwconv(*[t.float() for t in a])) <= tol
    d = _dffm_args(1, 24, 16, 4, 5, 6, dtype=dtype)
    o = tk.dffm_out_forward(*d, 1e-6)
    assert o.dtype == dtype
    assert _relerr(o.float(), reference.dffm_out(*[t.float() for t in d], 1e-6)) <= tol
    gs = tk.dffm_out_backward(torch.ones_like(o), *d, 1e-6)
    assert [g.dtype for g in gs] == [dtype] * 13
    _, rg = _ref_grads(reference.dffm_out, [t.float() for t in d], torch.ones(o.shape, device=DEV), 1e-6)
    assert max(_relerr(g.float(), r) for g, r in zip(gs, rg)) <= 3 * tol


def test_gradcheck_gated_dwconv_fp64():
    args = [a.requires_grad_() for a in _gated_args(1, 3, 3, 4, 2, 3, dtype=torch.float64)]
    assert torch.autograd.gradcheck(lambda *t: gated_dwconv(*t, backend="triton"), args, fast_mode=True)


def test_gradcheck_dffm_out_fp64():
    args = [a.requires_grad_() for a in _dffm_args(2, 3, 4, 2, 3, 2, dtype=torch.float64)]
    assert torch.autograd.gradcheck(lambda *t: dffm_out(*t, 1e-6, backend="triton"), args, fast_mode=True)


def test_compile_sm90_ptx():
    """Every kernel compiles to PTX for sm_90 (no GPU needed; started at import, see _sadffm_ptx.py)."""
    try:
        out, _ = _PTX_PROC.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        _PTX_PROC.kill()
        raise
    assert _PTX_PROC.returncode == 0, out
    assert out.count(": OK") == 12, out


def test_bad_input_errors():
    a = _gated_args(1, 4, 3, 3, 2, 3)
    with pytest.raises(TypeError, match="w_in"):
        tk.gated_dwconv_forward(a[0], a[1].double(), *a[2:])
    with pytest.raises(ValueError, match="w_dw"):
        tk.gated_dwconv_forward(*a[:3], a[3][:, :, :2, :2].contiguous(), a[4])
    with pytest.raises(ValueError, match="contiguous"):
        tk.gated_dwconv_forward(a[0].transpose(2, 3), *a[1:])
    d = _dffm_args(1, 3, 4, 2, 3, 3)
    with pytest.raises(ValueError, match="w_se"):
        tk.dffm_out_forward(*d[:11], d[11][:, :3].contiguous(), d[12], 1e-6)


_SAD_NAMES = ["linear_out.weight", "linear_out.bias", "DFFM.norm.weight", "DFFM.norm.bias",
              "DFFM.global_reduce.weight", "DFFM.global_reduce.bias", "DFFM.local_reduce.weight",
              "DFFM.local_reduce.bias", "DFFM.channel_expand.weight", "DFFM.channel_expand.bias",
              "DFFM.spatial_expand.weight", "DFFM.spatial_expand.bias"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the real-size layer is too slow for the interpreter")
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_golden_sadffm_layer_gpu(shared, dtype, tol):
    """Whole SADFFM (C=64, hidden=170) from the authors' code (../shared/golden), forward and backward."""
    d = torch.load(shared("golden", "layer_SADFFM.pt"))
    p = {k[6:]: v.to(DEV, dtype).requires_grad_() for k, v in d.items() if k.startswith("param.")}
    x = d["input"].to(DEV, dtype).requires_grad_()
    h = gated_dwconv(x, p["linear_in.weight"], p["linear_in.bias"], p["SAL.weight"], p["SAL.bias"], backend="triton")
    out = dffm_out(h, *[p[n] for n in _SAD_NAMES], 1e-6, backend="triton")
    assert _relerr(out.cpu(), d["output"]) <= tol
    (out * d["cotangent"].to(DEV, dtype)).sum().backward()
    assert _relerr(x.grad.cpu(), d["grad.input"]) <= 10 * tol
    for k, v in p.items():
        assert _relerr(v.grad.cpu(), d["grad." + k]) <= 10 * tol, k
