"""CUDA backend of the MOLRCM ops (dw_mix, proj_qv, gate_out) vs eimn_kernels.reference. Needs a GPU.

The reference runs in float64 on the same (cast) inputs, so cuDNN/cuBLAS TF32 settings cannot blur the check.
Tolerances (max abs error relative to max |ref|): float32 forward 1e-5, float32 gradients 1e-4 (sums over
N*H*W terms); float16 2e-2 and bfloat16 6e-2 forward and gradients (inputs, weights and some GEMM operands
are rounded to 8 or 11 bits of mantissa; accumulation is fp32). float64: torch.autograd.gradcheck.
"""
import pytest
import torch

import eimn_kernels as ek
from eimn_kernels import reference

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not ek.backend_status("cuda", "cuda")[0],
    reason="needs a CUDA GPU and eimn_kernels._C built with FORCE_CUDA=1 "
           f"({ek.backend_status('cuda', 'cuda')[1] if torch.cuda.is_available() else 'no GPU'})")

DEV = "cuda"
TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (2e-2, 2e-2), torch.bfloat16: (6e-2, 6e-2)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (N, C, H, W, c1, c2, K0, K1, K2, d0, d1, d2)
DW_CASES = [
    (2, 64, 24, 24, 24, 8, 5, 5, 7, 1, 2, 3),   # EIMN
    (1, 8, 1, 1, 3, 1, 5, 5, 7, 1, 2, 3),       # 1x1 image
    (3, 8, 7, 9, 3, 1, 5, 5, 7, 1, 2, 3),       # odd, batch 3
    (1, 6, 33, 20, 2, 0, 3, 5, 3, 2, 1, 2),     # c2 = 0, other kernels / dilations
    (1, 5, 1, 17, 0, 2, 5, 3, 5, 1, 1, 2),      # H = 1, c1 = 0
    (2, 4, 40, 37, 2, 2, 5, 5, 7, 1, 2, 3),     # c3 = 0, several tiles per plane
    (1, 3, 50, 45, 1, 1, 5, 7, 7, 1, 8, 9),     # large halo: small tiles / opt-in shared memory
]


def _rand(*shape, dtype, g, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device=DEV, dtype=dtype)


def _dw_inputs(case, dtype, seed=0):
    N, C, H, W, c1, c2, K0, K1, K2 = case[:9]
    g = torch.Generator().manual_seed(seed)
    c3 = C - c1 - c2
    return [_rand(N, C, H, W, dtype=dtype, g=g), _rand(C, 1, K0, K0, dtype=dtype, g=g, scale=0.3),
            _rand(C, dtype=dtype, g=g), _rand(c1, 1, K1, K1, dtype=dtype, g=g, scale=0.3), _rand(c1, dtype=dtype, g=g),
            _rand(c3, 1, K2, K2, dtype=dtype, g=g, scale=0.3), _rand(c3, dtype=dtype, g=g)]


def _proj_inputs(N, C, Cq, Cv, H, W, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = C ** -0.5
    return [_rand(N, C, H, W, dtype=dtype, g=g), _rand(Cq, C, 1, 1, dtype=dtype, g=g, scale=s), _rand(Cq, dtype=dtype, g=g),
            _rand(Cv, C, 1, 1, dtype=dtype, g=g, scale=s), _rand(Cv, dtype=dtype, g=g)]


def _gate_inputs(N, C, Co, H, W, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = C ** -0.5
    return [_rand(N, C, H, W, dtype=dtype, g=g), _rand(N, C, H, W, dtype=dtype, g=g), _rand(C, C, 1, 1, dtype=dtype, g=g, scale=s),
            _rand(C, dtype=dtype, g=g), _rand(Co, C, 1, 1, dtype=dtype, g=g, scale=s), _rand(Co, dtype=dtype, g=g)]


def _rel(a, b):
    b = b.double()
    if b.numel() == 0:
        return 0.0
    return ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _check(fn_cuda, fn_ref, inputs, dtype, n_out=1):
    """Forward and all input gradients of fn_cuda (dtype) vs fn_ref in float64."""
    fwd_tol, grad_tol = TOL[dtype]
    xs = [t.detach().requires_grad_() for t in inputs]
    x64 = [t.detach().double().requires_grad_() for t in inputs]
    out, ref = fn_cuda(*xs), fn_ref(*x64)
    out = (out,) if torch.is_tensor(out) else tuple(out)
    ref = (ref,) if torch.is_tensor(ref) else tuple(ref)
    assert len(out) == n_out
    g = torch.Generator().manual_seed(123)
    gos = [torch.randn(r.shape, generator=g, dtype=torch.float64).to(DEV) for r in ref]
    for o, r in zip(out, ref):
        assert o.dtype == dtype and o.shape == r.shape
        assert _rel(o, r) <= fwd_tol, f"forward rel error {_rel(o, r):.3g} > {fwd_tol}"
    grads = torch.autograd.grad(out, xs, [go.to(dtype) for go in gos], allow_unused=True)
    ref_grads = torch.autograd.grad(ref, x64, gos, allow_unused=True, materialize_grads=True)
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert a is not None and a.shape == b.shape and a.dtype == dtype, f"grad {i}"
        assert torch.isfinite(a).all(), f"grad {i} not finite"
        assert _rel(a, b) <= grad_tol, f"grad of input {i}: rel error {_rel(a, b):.3g} > {grad_tol}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DW_CASES, ids=[f"dw{i}" for i in range(len(DW_CASES))])
def test_dw_mix(case, dtype):
    c1, c2, d0, d1, d2 = case[4], case[5], case[9], case[10], case[11]
    _check(lambda *t: ek.dw_mix(*t, c1, c2, d0, d1, d2, backend="cuda"),
           lambda *t: reference.dw_mix(*t, c1, c2, d0, d1, d2), _dw_inputs(case, dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 64, 64, 64, 24, 24), (1, 5, 3, 7, 1, 1), (3, 8, 4, 2, 9, 5)])
def test_proj_qv(shape, dtype):
    N, C, Cq, Cv, H, W = shape
    _check(lambda *t: ek.proj_qv(*t, backend="cuda"), reference.proj_qv,
           _proj_inputs(N, C, Cq, Cv, H, W, dtype), dtype, n_out=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 64, 64, 24, 24), (1, 5, 3, 1, 7), (3, 8, 11, 9, 1)])
def test_gate_out(shape, dtype):
    N, C, Co, H, W = shape
    _check(lambda *t: ek.gate_out(*t, backend="cuda"), reference.gate_out, _gate_inputs(N, C, Co, H, W, dtype), dtype)


def test_gradcheck_fp64():
    case = (2, 5, 6, 7, 2, 1, 3, 3, 5, 1, 2, 1)
    c1, c2, d0, d1, d2 = case[4], case[5], case[9], case[10], case[11]
    xs = [t.requires_grad_() for t in _dw_inputs(case, torch.float64)]
    assert torch.autograd.gradcheck(lambda *t: ek.dw_mix(*t, c1, c2, d0, d1, d2, backend="cuda"), xs)
    xs = [t.requires_grad_() for t in _proj_inputs(2, 4, 3, 2, 3, 5, torch.float64)]
    assert torch.autograd.gradcheck(lambda *t: ek.proj_qv(*t, backend="cuda"), xs)
    xs = [t.requires_grad_() for t in _gate_inputs(2, 4, 3, 5, 3, torch.float64)]
    assert torch.autograd.gradcheck(lambda *t: ek.gate_out(*t, backend="cuda"), xs)


def test_fp64_matches_reference_tightly():
    case = DW_CASES[0]
    c1, c2, d0, d1, d2 = case[4], case[5], case[9], case[10], case[11]
    xs = _dw_inputs(case, torch.float64)
    assert _rel(ek.dw_mix(*xs, c1, c2, d0, d1, d2, backend="cuda"), reference.dw_mix(*xs, c1, c2, d0, d1, d2)) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_weight_grads_deterministic(dtype):
    """Two backward runs give bitwise-equal gradients (no float atomics)."""
    case = DW_CASES[0]
    c1, c2, d0, d1, d2 = case[4], case[5], case[9], case[10], case[11]
    dw = _dw_inputs(case, dtype)
    gy = torch.randn_like(dw[0])
    pq = _proj_inputs(2, 64, 64, 64, 24, 24, dtype)
    gq, gv = torch.randn(2, 64, 24, 24, device=DEV, dtype=dtype), torch.randn(2, 64, 24, 24, device=DEV, dtype=dtype)
    go = _gate_inputs(2, 64, 64, 24, 24, dtype)
    gout = torch.randn(2, 64, 24, 24, device=DEV, dtype=dtype)
    C = torch.ops.eimn_C
    runs = []
    for _ in range(2):
        runs.append(list(C.dw_mix_backward(gy, *dw, c1, c2, d0, d1, d2)) + list(C.proj_qv_backward(gq, gv, *pq))
                    + list(C.gate_out_backward(gout, *go)))
    for i, (a, b) in enumerate(zip(*runs)):
        assert torch.equal(a, b), f"gradient {i} differs between two runs"


def test_channels_last_input():
    case = DW_CASES[2]
    c1, c2, d0, d1, d2 = case[4], case[5], case[9], case[10], case[11]
    xs = _dw_inputs(case, torch.float32)
    y = ek.dw_mix(*xs, c1, c2, d0, d1, d2, backend="cuda")
    q_cl = xs[0].to(memory_format=torch.channels_last)
    torch.testing.assert_close(ek.dw_mix(q_cl, *xs[1:], c1, c2, d0, d1, d2, backend="cuda"), y, rtol=0, atol=0)
    p = _proj_inputs(2, 8, 6, 5, 7, 9, torch.float32)
    ref = ek.proj_qv(*p, backend="cuda")
    out = ek.proj_qv(p[0].to(memory_format=torch.channels_last), *p[1:], backend="cuda")
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)
    gt = _gate_inputs(2, 8, 6, 7, 9, torch.float32)
    torch.testing.assert_close(ek.gate_out(gt[0].to(memory_format=torch.channels_last),
                                           gt[1].to(memory_format=torch.channels_last), *gt[2:], backend="cuda"),
                               ek.gate_out(*gt, backend="cuda"))


def test_clear_errors():
    C = torch.ops.eimn_C
    q, w0, b0, w1, b1, w2, b2 = _dw_inputs(DW_CASES[2], torch.float32)
    with pytest.raises(RuntimeError, match="dtype"):
        C.dw_mix_forward(q, w0.double(), b0, w1, b1, w2, b2, 3, 1, 1, 2, 3)
    with pytest.raises(RuntimeError, match="contiguous"):
        C.dw_mix_forward(q.transpose(2, 3), w0, b0, w1, b1, w2, b2, 3, 1, 1, 2, 3)
    with pytest.raises(RuntimeError, match="channel split"):
        C.dw_mix_forward(q, w0, b0, w1, b1, w2, b2, 7, 3, 1, 2, 3)
    with pytest.raises(RuntimeError, match="w1 must have shape"):
        C.dw_mix_forward(q, w0, b0, w1[:2], b1, w2, b2, 3, 1, 1, 2, 3)
    with pytest.raises(RuntimeError, match="CUDA tensor|device"):
        C.dw_mix_forward(q, w0.cpu(), b0, w1, b1, w2, b2, 3, 1, 1, 2, 3)
    x, wq, bq, wv, bv = _proj_inputs(1, 5, 3, 7, 2, 2, torch.float32)
    with pytest.raises(RuntimeError, match="wv must have shape"):
        C.proj_qv_forward(x, wq, bq, wv[:, :4].contiguous(), bv)
    y, v, wf, bf, wo, bo = _gate_inputs(1, 5, 3, 2, 2, torch.float32)
    with pytest.raises(RuntimeError, match="v must have shape"):
        C.gate_out_forward(y, v[:, :4].contiguous(), wf, bf, wo, bo)
