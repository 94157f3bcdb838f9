"""CUDA backend of the SADFFM ops (gated_dwconv, dffm_out) against eimn_kernels.reference.

Needs a CUDA GPU and eimn_kernels._C built with FORCE_CUDA=1; skipped otherwise.
References are evaluated in float64 (cuDNN may use TF32 for float32 convolutions), errors are measured
relative to max |reference|. Tolerances: float32 forward 1e-5, float32 gradients 1e-4 (sums over all pixels),
float16 2e-2, bfloat16 8e-2 (half-precision inputs, intermediates y/t stored in the input dtype).
"""
import pytest
import torch

import eimn_kernels as ek
from eimn_kernels import reference


def _cuda_ready():
    if not torch.cuda.is_available():
        return False, "no CUDA GPU on this machine"
    ok, why = ek.backend_status("cuda", torch.device("cuda"))
    return ok, why


_OK, _WHY = _cuda_ready()
pytestmark = pytest.mark.skipif(not _OK, reason=f"cuda backend unavailable: {_WHY}")

DEV = "cuda"
TOL_FWD = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 8e-2, torch.float64: 1e-12}
TOL_BWD = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 8e-2, torch.float64: 1e-10}


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def _rel(a, ref):
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def _gated_inputs(N, C, hid, K, H, W, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s, sc=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * sc).to(DEV, dtype)
    return (mk(N, C, H, W), mk(2 * hid, C, 1, 1, sc=C ** -0.5), mk(2 * hid, sc=0.1),
            mk(2 * hid, 1, K, K, sc=1.0 / K), mk(2 * hid, sc=0.1))


def _dffm_inputs(N, hid, C, R, H, W, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s, sc=1.0, off=0.0: (torch.randn(*s, generator=g, dtype=torch.float64) * sc + off).to(DEV, dtype)
    return (mk(N, hid, H, W), mk(C, hid, 1, 1, sc=hid ** -0.5), mk(C, sc=0.1), mk(C, sc=0.2, off=1.0),
            mk(C, sc=0.1), mk(R, C, 1, 1, sc=C ** -0.5), mk(R, sc=0.1), mk(R, C, 1, 1, sc=C ** -0.5),
            mk(R, sc=0.1), mk(C, R, 1, 1, sc=R ** -0.5), mk(C, sc=0.1), mk(1, 2 * R, 1, 1, sc=R ** -0.5),
            mk(1, sc=0.1))


def _ref_grads(fn, inputs, grad_out, *scalars):
    ins = [t.detach().double().requires_grad_(True) for t in inputs]
    out = fn(*ins, *scalars)
    return out.detach(), torch.autograd.grad(out, ins, grad_out.double())


GATED_SHAPES = [  # N, C, hid, K, H, W
    (1, 64, 170, 3, 7, 9),
    (3, 8, 5, 3, 33, 20),
    (2, 16, 12, 5, 1, 1),
    (1, 4, 3, 3, 1, 17),
    (2, 6, 4, 1, 40, 70),
    (1, 5, 2, 7, 19, 1),
]
DFFM_SHAPES = [  # N, hid, C, R, H, W
    (1, 170, 64, 16, 7, 9),
    (3, 12, 8, 2, 33, 20),
    (2, 5, 6, 3, 1, 1),
    (1, 7, 4, 1, 1, 130),
    (2, 9, 16, 4, 45, 31),
]


@pytest.mark.parametrize("shape", GATED_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gated_dwconv_forward_backward(shape, dtype):
    N, C, hid, K, H, W = shape
    ins = _gated_inputs(N, C, hid, K, H, W, dtype)
    h = torch.ops.eimn_C.gated_dwconv_forward(*ins)
    assert h.shape == (N, hid, H, W) and h.dtype == dtype
    gh = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEV, dtype)
    ref, ref_g = _ref_grads(reference.gated_dwconv, ins, gh)
    assert _rel(h, ref) <= TOL_FWD[dtype], f"forward rel err {_rel(h, ref):.3g}"
    grads = torch.ops.eimn_C.gated_dwconv_backward(gh, *ins)
    for name, g, r, t in zip(("x", "w_in", "b_in", "w_dw", "b_dw"), grads, ref_g, ins):
        assert g.shape == t.shape and g.dtype == dtype, name
        assert _rel(g, r) <= TOL_BWD[dtype], f"grad {name}: rel err {_rel(g, r):.3g}"


@pytest.mark.parametrize("shape", DFFM_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dffm_out_forward_backward(shape, dtype):
    N, hid, C, R, H, W = shape
    ins = _dffm_inputs(N, hid, C, R, H, W, dtype)
    out = torch.ops.eimn_C.dffm_out_forward(*ins, 1e-6)
    assert out.shape == (N, C, H, W) and out.dtype == dtype
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEV, dtype)
    ref, ref_g = _ref_grads(reference.dffm_out, ins, go, 1e-6)
    assert _rel(out, ref) <= TOL_FWD[dtype], f"forward rel err {_rel(out, ref):.3g}"
    grads = torch.ops.eimn_C.dffm_out_backward(go, *ins, 1e-6)
    names = ("h", "w_out", "b_out", "ln_w", "ln_b", "w_gr", "b_gr", "w_lr", "b_lr", "w_ce", "b_ce", "w_se", "b_se")
    for name, g, r, t in zip(names, grads, ref_g, ins):
        assert g.shape == t.shape and g.dtype == dtype, name
        assert _rel(g, r) <= TOL_BWD[dtype], f"grad {name}: rel err {_rel(g, r):.3g}"


def test_float64_exact_and_large_kernel():
    # K = 9 in float64 needs > 48 KiB of shared memory in the backward (opt-in path).
    ins = _gated_inputs(2, 3, 2, 9, 21, 37, torch.float64)
    gh = torch.randn(2, 2, 21, 37, dtype=torch.float64, device=DEV)
    ref, ref_g = _ref_grads(reference.gated_dwconv, ins, gh)
    assert _rel(torch.ops.eimn_C.gated_dwconv_forward(*ins), ref) <= 1e-12
    for g, r in zip(torch.ops.eimn_C.gated_dwconv_backward(gh, *ins), ref_g):
        assert _rel(g, r) <= 1e-10


def test_gradcheck_float64():
    ins = [t.requires_grad_(True) for t in _gated_inputs(2, 3, 2, 3, 5, 4, torch.float64)]
    assert torch.autograd.gradcheck(lambda *a: ek.gated_dwconv(*a, backend="cuda"), ins, eps=1e-6, atol=1e-7)
    ins = [t.requires_grad_(True) for t in _dffm_inputs(2, 3, 4, 2, 3, 5, torch.float64)]
    assert torch.autograd.gradcheck(lambda *a: ek.dffm_out(*a, eps=1e-6, backend="cuda"), ins, eps=1e-6,
                                    atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_grads_deterministic(dtype):
    ins = _gated_inputs(2, 64, 170, 3, 45, 70, dtype)
    gh = torch.randn(2, 170, 45, 70, device=DEV).to(dtype)
    a = torch.ops.eimn_C.gated_dwconv_backward(gh, *ins)
    b = torch.ops.eimn_C.gated_dwconv_backward(gh, *ins)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    ins = _dffm_inputs(2, 170, 64, 16, 45, 70, dtype)
    go = torch.randn(2, 64, 45, 70, device=DEV).to(dtype)
    a = torch.ops.eimn_C.dffm_out_backward(go, *ins, 1e-6)
    b = torch.ops.eimn_C.dffm_out_backward(go, *ins, 1e-6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_channels_last_and_public_api():
    ins = _gated_inputs(2, 8, 6, 3, 11, 13, torch.float32)
    x_cl = ins[0].to(memory_format=torch.channels_last)
    h = torch.ops.eimn_C.gated_dwconv_forward(*ins)
    assert torch.equal(torch.ops.eimn_C.gated_dwconv_forward(x_cl, *ins[1:]), h)
    assert torch.equal(ek.gated_dwconv(x_cl, *ins[1:], backend="cuda"), h)
    d = _dffm_inputs(2, 6, 8, 2, 11, 13, torch.float32)
    out = torch.ops.eimn_C.dffm_out_forward(*d, 1e-6)
    h_cl = d[0].to(memory_format=torch.channels_last)
    assert torch.equal(torch.ops.eimn_C.dffm_out_forward(h_cl, *d[1:], 1e-6), out)
    assert torch.equal(ek.dffm_out(h_cl, *d[1:], eps=1e-6, backend="cuda"), out)


def test_bad_inputs_raise():
    x, w_in, b_in, w_dw, b_dw = _gated_inputs(1, 4, 2, 3, 5, 5, torch.float32)
    with pytest.raises(RuntimeError, match="w_in"):
        torch.ops.eimn_C.gated_dwconv_forward(x, w_in.cpu(), b_in, w_dw, b_dw)
    with pytest.raises(RuntimeError, match="odd"):
        torch.ops.eimn_C.gated_dwconv_forward(x, w_in, b_in, w_dw[:, :, :2, :2].contiguous(), b_dw)
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.eimn_C.gated_dwconv_forward(x, w_in.double(), b_in, w_dw, b_dw)
    d = list(_dffm_inputs(1, 3, 4, 2, 3, 3, torch.float32))
    d[11] = d[11][:, :3].contiguous()  # w_se must be (1, 2R, 1, 1)
    with pytest.raises(RuntimeError, match="w_se"):
        torch.ops.eimn_C.dffm_out_forward(*d, 1e-6)
