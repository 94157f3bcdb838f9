"""MOLRCM ops (dw_mix, proj_qv, gate_out) on the C++ kernel backends 'cpu' and 'cuda'.

Every check compares against eimn_kernels.reference (pure PyTorch) or the golden tensors of the
authors' code, never against the backend itself. Shapes are small so the file stays fast.
"""
import pytest
import torch

import eimn_kernels as ek
from eimn_kernels import reference as R

from conftest import shared_path, skip_unless_backend

DEVICES = {"cpu": "cpu", "cuda": "cuda"}


@pytest.fixture(params=["cpu", "cuda"])
def backend(request):
    """(backend name, device) for each kernel backend, skipped with the reason when unavailable."""
    name = request.param
    skip_unless_backend(name, DEVICES[name])
    return name, DEVICES[name]


def _rel(a, b):
    """max |a - b| relative to max |b|."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, dtype, device, gen, grad=False):
    t = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    return t.requires_grad_(grad)


# ------------------------------------------------------------------ argument builders
def dw_mix_args(N, C, H, W, c1, c2, ks=(5, 5, 7), ds=(1, 2, 3), dtype=torch.float64, device="cpu", seed=0,
                grad=True):
    g = _g(seed)
    c3 = C - c1 - c2
    k0, k1, k2 = ks
    q = _randn(N, C, H, W, dtype=dtype, device=device, gen=g, grad=grad)
    w = [_randn(C, 1, k0, k0, dtype=dtype, device=device, gen=g, grad=grad),
         _randn(C, dtype=dtype, device=device, gen=g, grad=grad),
         _randn(c1, 1, k1, k1, dtype=dtype, device=device, gen=g, grad=grad),
         _randn(c1, dtype=dtype, device=device, gen=g, grad=grad),
         _randn(c3, 1, k2, k2, dtype=dtype, device=device, gen=g, grad=grad),
         _randn(c3, dtype=dtype, device=device, gen=g, grad=grad)]
    return (q, *w), (c1, c2, *ds)


def proj_qv_args(N, C, H, W, Cq=None, Cv=None, dtype=torch.float64, device="cpu", seed=0, grad=True):
    g = _g(seed)
    Cq, Cv = Cq or C, Cv or C
    x = _randn(N, C, H, W, dtype=dtype, device=device, gen=g, grad=grad)
    p = [_randn(Cq, C, 1, 1, dtype=dtype, device=device, gen=g, grad=grad) * 0.5,
         _randn(Cq, dtype=dtype, device=device, gen=g, grad=grad),
         _randn(Cv, C, 1, 1, dtype=dtype, device=device, gen=g, grad=grad) * 0.5,
         _randn(Cv, dtype=dtype, device=device, gen=g, grad=grad)]
    p = [t.detach().requires_grad_(grad) for t in p]
    return (x, *p), ()


def gate_out_args(N, C, H, W, Co=None, dtype=torch.float64, device="cpu", seed=0, grad=True):
    g = _g(seed)
    Co = Co or C
    y = _randn(N, C, H, W, dtype=dtype, device=device, gen=g, grad=grad)
    v = _randn(N, C, H, W, dtype=dtype, device=device, gen=g, grad=grad)
    p = [_randn(C, C, 1, 1, dtype=dtype, device=device, gen=g) * 0.5,
         _randn(C, dtype=dtype, device=device, gen=g),
         _randn(Co, C, 1, 1, dtype=dtype, device=device, gen=g) * 0.5,
         _randn(Co, dtype=dtype, device=device, gen=g)]
    p = [t.requires_grad_(grad) for t in p]
    return (y, v, *p), ()


OPS = {"dw_mix": (ek.dw_mix, R.dw_mix, dw_mix_args),
       "proj_qv": (ek.proj_qv, R.proj_qv, proj_qv_args),
       "gate_out": (ek.gate_out, R.gate_out, gate_out_args)}


def _default_args(name, N, C, H, W, **kw):
    if name == "dw_mix":
        c1, c2 = max(C * 3 // 8, 1), max(C // 8, 1)
        return dw_mix_args(N, C, H, W, c1, c2, **kw)
    return OPS[name][2](N, C, H, W, **kw)


def _outs(o):
    return (o,) if torch.is_tensor(o) else tuple(o)


# ------------------------------------------------------------------ fp64 gradcheck
SHAPES = [(1, 4, 1, 1), (3, 5, 7, 9), (1, 6, 33, 20), (3, 3, 33, 20)]


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gradcheck_fp64(backend, op, shape):
    name, dev = backend
    fn = OPS[op][0]
    tensors, scalars = _default_args(op, *shape, device=dev)
    # fast mode (random projections) keeps this quick; the full Jacobian only for the 1x1 image
    full = shape[2] * shape[3] == 1 and op != "dw_mix"
    assert torch.autograd.gradcheck(lambda *t: fn(*t, *scalars, backend=name), tensors, fast_mode=not full)


# general kernel sizes / dilations and empty groups (c1, c2 or c3 = 0)
DW_CASES = [  # N, C, H, W, c1, c2, ks, ds
    (1, 4, 7, 9, 1, 1, (3, 3, 3), (1, 1, 1)),
    (3, 5, 7, 9, 0, 2, (5, 1, 3), (2, 1, 3)),   # c1 = 0
    (1, 5, 6, 5, 2, 0, (3, 5, 5), (3, 2, 1)),   # c2 = 0
    (1, 4, 7, 9, 2, 2, (1, 7, 3), (1, 1, 2)),   # c3 = 0
    (1, 3, 1, 1, 1, 1, (5, 5, 7), (1, 2, 3)),   # 1x1 image, padding wider than the image
    (1, 3, 33, 20, 1, 1, (9, 11, 5), (2, 1, 4)),  # sizes without a specialised kernel
    (1, 3, 4, 4, 0, 3, (3, 3, 3), (1, 1, 1)),   # identity only
]


@pytest.mark.parametrize("case", DW_CASES, ids=lambda c: f"N{c[0]}C{c[1]}_{c[2]}x{c[3]}_s{c[4]}{c[5]}_k{c[6]}_d{c[7]}")
def test_dw_mix_general_gradcheck_fp64(backend, case):
    name, dev = backend
    N, C, H, W, c1, c2, ks, ds = case
    tensors, scalars = dw_mix_args(N, C, H, W, c1, c2, ks, ds, device=dev)
    y = ek.dw_mix(*tensors, *scalars, backend=name)
    assert _rel(y, R.dw_mix(*tensors, *scalars)) < 1e-12
    assert torch.autograd.gradcheck(lambda *t: ek.dw_mix(*t, *scalars, backend=name), tensors, fast_mode=True)


# ------------------------------------------------------------------ fp32 vs reference
FP32_SHAPES = [(1, 8, 1, 1), (3, 16, 7, 9), (1, 64, 33, 20), (2, 64, 21, 30)]


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("shape", FP32_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fp32_forward_backward_vs_reference(backend, op, shape):
    name, dev = backend
    fn, ref = OPS[op][0], OPS[op][1]
    tensors, scalars = _default_args(op, *shape, dtype=torch.float32, device=dev, seed=1)
    out_k = _outs(fn(*tensors, *scalars, backend=name))
    out_r = _outs(ref(*tensors, *scalars))
    for a, b in zip(out_k, out_r):
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert _rel(a, b) <= 1e-5
    cot = [torch.randn(o.shape, generator=_g(2)).to(dev) for o in out_r]
    gk = torch.autograd.grad(out_k, tensors, cot)
    # reference gradients in float64 (same inputs), so the bound measures the kernel's error
    t64 = [t.detach().double().requires_grad_() for t in tensors]
    g64 = torch.autograd.grad(_outs(ref(*t64, *scalars)), t64, [c.double() for c in cot])
    for i, (a, b) in enumerate(zip(gk, g64)):
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert _rel(a, b) <= 2e-5, f"gradient of input {i}"


# ------------------------------------------------------------------ golden layer
def test_golden_molrcm_fp64(backend):
    name, dev = backend
    gold = torch.load(shared_path("golden", "layer_MOLRCM.pt"), map_location="cpu")
    x = gold["input"].to(dev)
    dim = x.shape[1]
    m = ek.MOLRCM(dim, backend=name).to(device=dev, dtype=torch.float64)
    params = {k[len("param."):]: v for k, v in gold.items() if k.startswith("param.")}
    m.load_state_dict(params)
    x = x.clone().requires_grad_()
    out = m(x)
    assert _rel(out, gold["output"].to(dev)) <= 1e-10
    (out * gold["cotangent"].to(dev)).sum().backward()
    assert _rel(x.grad, gold["grad.input"].to(dev)) <= 1e-10
    for k, p in m.named_parameters():
        assert _rel(p.grad, gold[f"grad.{k}"].to(dev)) <= 1e-10, k


# ------------------------------------------------------------------ custom-op machinery
@pytest.mark.parametrize("op", list(OPS))
def test_opcheck(backend, op):
    name, dev = backend
    tensors, scalars = _default_args(op, 2, 5, 7, 9, device=dev)
    fwd = getattr(torch.ops.eimn_kernels, op)
    torch.library.opcheck(fwd, (*tensors, *scalars, name))
    outs = _outs(fwd(*[t.detach() for t in tensors], *scalars, name))
    grads = [torch.randn_like(o) for o in outs]
    bwd = getattr(torch.ops.eimn_kernels, f"{op}_backward")
    torch.library.opcheck(bwd, (*grads, *[t.detach() for t in tensors], *scalars, name))


def test_torch_compile_fullgraph_cpu():
    ok, why = ek.backend_status("cpu", "cpu")
    if not ok:
        pytest.skip(f"cpu backend unavailable: {why}")
    torch._dynamo.reset()
    m = ek.MOLRCM(8, backend="cpu").double()
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64, requires_grad=True)

    def f(x):
        return m(x).square().sum()

    f(x)  # eager call first: imports the backend module (importlib is not traceable)
    # backend="aot_eager": dynamo + fake tensors + AOT autograd; inductor also passes but adds ~30 s of C++ codegen
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = cf(x)
    (gx,) = torch.autograd.grad(got, x)
    x2 = x.detach().clone().requires_grad_()
    c1, c2, _ = m.split
    p = {k: v for k, v in m.state_dict().items()}
    want = R.molrcm(x2, p, c1, c2).square().sum()
    (gx2,) = torch.autograd.grad(want, x2)
    assert _rel(got, want) < 1e-12 and _rel(gx, gx2) < 1e-12


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("op", list(OPS))
def test_backward_deterministic_across_threads(op):
    """cpu backend: weight gradients are reduced in a fixed order: bitwise equal for 1 and 2 threads."""
    ok, why = ek.backend_status("cpu", "cpu")
    if not ok:
        pytest.skip(f"cpu backend unavailable: {why}")
    tensors, scalars = _default_args(op, 2, 16, 33, 20, dtype=torch.float32, seed=3)
    fn = OPS[op][0]
    outs = _outs(fn(*tensors, *scalars, backend="cpu"))
    cot = [torch.randn(o.shape, generator=_g(4)) for o in outs]
    n = torch.get_num_threads()
    res = []
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            res.append(torch.autograd.grad(_outs(fn(*tensors, *scalars, backend="cpu")), tensors, cot))
    finally:
        torch.set_num_threads(n)
    for other in res[1:]:
        for a, b in zip(res[0], other):
            assert torch.equal(a, b)


# ------------------------------------------------------------------ layouts
@pytest.mark.parametrize("op", list(OPS))
def test_channels_last_and_noncontiguous(backend, op):
    name, dev = backend
    fn, ref = OPS[op][0], OPS[op][1]
    tensors, scalars = _default_args(op, 2, 8, 7, 9, device=dev, grad=False)
    n_img = 2 if op == "gate_out" else 1
    want = _outs(ref(*tensors, *scalars))
    imgs = tensors[:n_img]
    variants = {
        "channels_last": [t.contiguous(memory_format=torch.channels_last) for t in imgs],
        "transposed_hw": [t.transpose(2, 3).contiguous().transpose(2, 3) for t in imgs],
        "strided_w": [torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0] for t in imgs],
    }
    for vname, vs in variants.items():
        assert not all(v.is_contiguous() for v in vs)
        got = _outs(fn(*vs, *tensors[n_img:], *scalars, backend=name))
        for a, b in zip(got, want):
            assert _rel(a, b) < 1e-12, vname
    # gradients with a channels_last input
    x = tensors[0].contiguous(memory_format=torch.channels_last).requires_grad_()
    rest = tensors[1:]
    gk = torch.autograd.grad(sum(o.sum() for o in _outs(fn(x, *rest, *scalars, backend=name))), x)[0]
    x2 = tensors[0].clone().requires_grad_()
    gr = torch.autograd.grad(sum(o.sum() for o in _outs(ref(x2, *rest, *scalars))), x2)[0]
    assert _rel(gk, gr) < 1e-12


# ------------------------------------------------------------------ bad input
def test_bad_input_errors(backend):
    name, dev = backend
    (q, *w), (c1, c2, d0, d1, d2) = dw_mix_args(1, 8, 5, 6, 3, 1, device=dev, grad=False)
    with pytest.raises(ValueError, match="4-d"):
        ek.dw_mix(q[0], *w, c1, c2, backend=name)
    with pytest.raises(ValueError, match="does not fit"):
        ek.dw_mix(q, *w, 6, 4, backend=name)
    with pytest.raises(ValueError, match="w0 must have shape"):
        ek.dw_mix(q[:, :7], *w, c1, c2, backend=name)
    with pytest.raises(TypeError, match="dtype"):
        ek.dw_mix(q, w[0].float(), *w[1:], c1, c2, backend=name)
    (x, *p), _ = proj_qv_args(1, 4, 3, 3, device=dev, grad=False)
    with pytest.raises(ValueError, match="wq must have shape"):
        ek.proj_qv(x[:, :3], *p, backend=name)
    with pytest.raises(ValueError, match="on cpu|on cuda"):
        other = "cpu" if dev != "cpu" else "meta"
        ek.proj_qv(x, p[0].to(other), *p[1:], backend=name)
    (y, v, *pg), _ = gate_out_args(1, 4, 3, 3, device=dev, grad=False)
    with pytest.raises(ValueError, match="v has shape"):
        ek.gate_out(y, v[:, :, :2], *pg, backend=name)
    with pytest.raises(ValueError, match="4-d"):
        ek.gate_out(y.flatten(2), v, *pg, backend=name)


def test_cpp_checks_cpu():
    """The C++ entry points check their inputs too (they can be called directly)."""
    ok, why = ek.backend_status("cpu", "cpu")
    if not ok:
        pytest.skip(f"cpu backend unavailable: {why}")
    C = torch.ops.eimn_C
    (q, *w), (c1, c2, d0, d1, d2) = dw_mix_args(1, 8, 5, 6, 3, 1, grad=False)
    with pytest.raises(RuntimeError, match="does not fit"):
        C.dw_mix_forward(q, *w, 6, 4, d0, d1, d2)
    with pytest.raises(RuntimeError, match="4-d"):
        C.dw_mix_forward(q[0], *w, c1, c2, d0, d1, d2)
    with pytest.raises(RuntimeError, match="odd K"):
        C.dw_mix_forward(q, w[0][..., :4, :4], *w[1:], c1, c2, d0, d1, d2)
    with pytest.raises(RuntimeError, match="dilations"):
        C.dw_mix_forward(q, *w, c1, c2, 0, d1, d2)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        C.dw_mix_forward(q.half(), *w, c1, c2, d0, d1, d2)
    (x, *p), _ = proj_qv_args(1, 4, 3, 3, grad=False)
    with pytest.raises(RuntimeError, match="dtype"):
        C.proj_qv_forward(x.float(), *p)
    with pytest.raises(RuntimeError, match="grad_q"):
        C.proj_qv_backward(x[:, :, :2], x, x, *p)
    (y, v, *pg), _ = gate_out_args(1, 4, 3, 3, grad=False)
    with pytest.raises(RuntimeError, match="wf"):
        C.gate_out_forward(y, v, pg[0][:3], *pg[1:])


def test_dw_mix_cpu_forward_paths_agree():
    """The CPU dw_mix forward's two paths, per plane (wide images) and channel-blocked (below 30 pixels wide:
    csrc/cpu/molrcm_dwblock.h), each forced by EIMN_DW_BLOCKED_MAX_W (0: never blocked, 1000: always), match the
    reference in float64 on both sides of the threshold, with every group (split 3/1/4 of 40 channels: blocks of
    8 lanes span groups), dilations and a 7-channel tail block. 11 x 85 pixels: the per-plane path's row pairs
    (y, y + d) with single rows left over, its column blocks and the columns past them (molrcm_dwplane.h)."""
    import os
    import subprocess
    import sys
    if not ek.backend_status("cpu", "cpu")[0]:
        pytest.skip("the cpu backend is not built")
    code = (
        "import torch, eimn_kernels as ek\n"
        "from eimn_kernels import reference as R\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for (C, H, W, c1, c2) in ((40, 9, 7, 15, 5), (47, 6, 29, 16, 8), (40, 5, 30, 15, 5), (23, 4, 45, 8, 3),\n"
        "                         (16, 11, 85, 6, 2)):\n"
        "    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)\n"
        "    c3 = C - c1 - c2\n"
        "    a = (r(2, C, H, W), r(C, 1, 5, 5), r(C), r(c1, 1, 5, 5), r(c1), r(c3, 1, 7, 7), r(c3))\n"
        "    want = R.dw_mix(*a, c1, c2, 1, 2, 3)\n"
        "    got = ek.dw_mix(*a, c1, c2, d0=1, d1=2, d2=3, backend='cpu')\n"
        "    print(float((got - want).abs().max() / want.abs().max()))\n")
    for force in ("0", "1000"):
        env = dict(os.environ, EIMN_DW_BLOCKED_MAX_W=force)
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
        errs = [float(v) for v in out.stdout.split()]
        assert len(errs) == 5 and max(errs) < 1e-13, (force, errs)


def test_dw_mix_cpu_planes_dealt_to_threads():
    """The per-plane dw_mix (wide images) deals its (image, channel) planes to the threads by cost (the groups'
    planes run different convs): forward and every gradient bitwise equal for 1, 2 and 3 threads, one image (where
    the old contiguous halves were unbalanced) and three."""
    if not ek.backend_status("cpu", "cpu")[0]:
        pytest.skip("the cpu backend is not built")
    g = _g(5)
    C, c1, c2 = 24, 9, 3
    c3 = C - c1 - c2
    n = torch.get_num_threads()
    for N in (1, 3):
        a = [torch.randn(*s, generator=g) for s in ((N, C, 7, 41), (C, 1, 5, 5), (C,), (c1, 1, 5, 5), (c1,),
                                                   (c3, 1, 7, 7), (c3,))]
        a = [t.requires_grad_() for t in a]
        cot = torch.randn(N, C, 7, 41, generator=g)
        res = []
        try:
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                y = ek.dw_mix(*a, c1, c2, d0=1, d1=2, d2=3, backend="cpu")
                res.append((y.detach(), *torch.autograd.grad(y, a, cot)))
        finally:
            torch.set_num_threads(n)
        for other in res[1:]:
            for u, v in zip(res[0], other):
                assert torch.equal(u, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_molrcm_infer_residual_in_the_epilogue(dtype):
    """eimn_C::molrcm_infer_forward with ``residual`` (the folded EIMN block's x + attn(x), added in gate_out's
    epilogue from packed panels): the bits of the layer's output plus the residual, both with rows that fill whole
    panels and with a partial last panel (13 x 11 pixels); a residual of another shape stops with its name."""
    if not ek.backend_status("cpu", "cpu")[0]:
        pytest.skip("the cpu backend is not built")
    C = torch.ops.eimn_C
    g = _g(3)
    for (N, dim, H, W) in ((2, 16, 8, 16), (1, 24, 13, 11)):
        c1, c2 = dim * 3 // 8, dim // 8
        c3 = dim - c1 - c2
        r = lambda *s: _randn(*s, dtype=dtype, device="cpu", gen=g) * 0.3  # noqa: E731
        x, res = r(N, dim, H, W), r(N, dim, H, W)
        ws = [r(dim, dim, 1, 1), r(dim), r(dim, dim, 1, 1), r(dim), r(dim, 1, 5, 5), r(dim), r(c1, 1, 5, 5), r(c1),
              r(c3, 1, 7, 7), r(c3), r(dim, dim, 1, 1), r(dim), r(dim, dim, 1, 1), r(dim)]
        plain = C.molrcm_infer_forward(x, *ws, c1, c2, 1, 2, 3, False)
        assert torch.equal(C.molrcm_infer_forward(x, *ws, c1, c2, 1, 2, 3, False, res), plain + res)
        with pytest.raises(RuntimeError, match="residual"):
            C.molrcm_infer_forward(x, *ws, c1, c2, 1, 2, 3, False, res[:, :, :-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_molrcm_infer_residual_is_input_computes_v_in_gate_out(dtype):
    """molrcm_infer_forward(x, ..., residual=x) (the EIMN block's call) computes v = Wv x + bv inside gate_out from
    the residual's panels instead of storing and reloading it: the bits of the general path (a residual that is an
    equal copy, not x itself), with whole and partial panels and several images; in bfloat16 too where the CPU has
    it; and a proj_value of another shape still gives its clear error."""
    if not ek.backend_status("cpu", "cpu")[0]:
        pytest.skip("the cpu backend is not built")
    C = torch.ops.eimn_C
    g = _g(5)
    for (N, dim, H, W) in ((2, 16, 8, 16), (1, 24, 13, 11), (1, 64, 9, 70)):
        c1, c2 = dim * 3 // 8, dim // 8
        c3 = dim - c1 - c2
        r = lambda *s: _randn(*s, dtype=dtype, device="cpu", gen=g) * 0.3  # noqa: E731
        x = r(N, dim, H, W)
        ws = [r(dim, dim, 1, 1), r(dim), r(dim, dim, 1, 1), r(dim), r(dim, 1, 5, 5), r(dim), r(c1, 1, 5, 5), r(c1),
              r(c3, 1, 7, 7), r(c3), r(dim, dim, 1, 1), r(dim), r(dim, dim, 1, 1), r(dim)]
        modes = [False] + ([True] if dtype == torch.float32 and ek.bf16_engine() else [])
        for bf16 in modes:
            got = C.molrcm_infer_forward(x, *ws, c1, c2, 1, 2, 3, bf16, x)
            want = C.molrcm_infer_forward(x, *ws, c1, c2, 1, 2, 3, bf16, x.clone())
            assert torch.equal(got, want), (N, dim, H, W, bf16)
        bad = list(ws)
        bad[2] = r(dim, dim + 1, 1, 1)
        with pytest.raises(RuntimeError, match="wv"):
            C.molrcm_infer_forward(x, *bad, c1, c2, 1, 2, 3, False, x)


def test_molrcm_module_residual_runs_in_the_kernel():
    """ek.MOLRCM.forward(x, residual=r) without autograd on CPU runs the one-call kernel (runs_residual) and gives
    the bits of forward(x) + r (the custom ops' path); with autograd it falls back to the sum, gradients intact."""
    if not ek.backend_status("cpu", "cpu")[0]:
        pytest.skip("the cpu backend is not built")
    from eimn.model import MOLRCM as EagerMOLRCM
    torch.manual_seed(0)
    m = ek.MOLRCM.from_module(EagerMOLRCM(16), backend="cpu")
    x, r = torch.randn(1, 16, 9, 20), torch.randn(1, 16, 9, 20)
    with torch.no_grad():
        assert m.runs_residual(x)
        assert torch.equal(m(x, residual=r), m(x) + r)
    xg = x.clone().requires_grad_(True)
    assert not m.runs_residual(xg)
    out = m(xg, residual=r)
    out.sum().backward()
    assert xg.grad is not None and torch.allclose(out.detach(), m(x).detach() + r)
