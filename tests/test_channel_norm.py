"""channel_layer_norm (EIMN's LayerNorm between blocks, on NCHW) on the kernel backends 'cpu', 'triton' (Triton
interpreter on CPU, tiny shapes) and 'cuda', against nn.LayerNorm on the permuted view; the model swap. Each
backend is skipped, with its reason, where it cannot run here."""
import copy

import pytest
import torch

import eimn_kernels as ek
from eimn_kernels import reference  # the model's own computation: nn.LayerNorm on the NHWC view
from eimn.model import EIMN

from conftest import skip_unless_backend

DEV = {"cpu": "cpu", "triton": "cuda" if torch.cuda.is_available() else "cpu", "cuda": "cuda"}
INTERP = not torch.cuda.is_available()  # triton runs in the interpreter: keep its shapes tiny


@pytest.fixture(params=["cpu", "triton", "cuda"])
def backend(request):
    """(backend, device), skipped with the backend's own reason when it cannot run here."""
    name = request.param
    skip_unless_backend(name, DEV[name])
    return name, torch.device(DEV[name])


def inputs(N, C, H, W, dtype, device, seed=0):
    """x (N, C, H, W) with a per-pixel offset (a mean for the norm to remove) and weight, bias (C,)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64) * 2 + torch.randn(N, 1, H, W, generator=g) * 3
    w = 1 + 0.3 * torch.randn(C, generator=g, dtype=torch.float64)
    b = 0.2 * torch.randn(C, generator=g, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device) for t in (x, w, b)]


def _relerr(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("shape", [(1, 5, 3, 7), (3, 8, 4, 1)])
def test_gradcheck_fp64(backend, shape):
    name, dev = backend
    if name != "cpu" and INTERP:
        shape = (shape[0], 3, 2, 2)
    ts = [t.requires_grad_() for t in inputs(*shape, torch.float64, dev)]
    assert torch.autograd.gradcheck(lambda *a: ek.channel_layer_norm(*a, 1e-5, backend=name), ts,
                                    fast_mode=name != "cpu")


@pytest.mark.parametrize("shape", [(2, 64, 9, 40), (1, 16, 1, 300), (3, 7, 5, 6)])
def test_fp32_vs_layer_norm(backend, shape):
    """Forward within 1e-5 relative of nn.LayerNorm (fp64), gradients within 1e-5 too; output contiguous."""
    name, dev = backend
    if name != "cpu" and INTERP:
        shape = (shape[0], shape[1], 2, 5)
    x, w, b = [t.requires_grad_() for t in inputs(*shape, torch.float32, dev)]
    y = ek.channel_layer_norm(x, w, b, 1e-6, backend=name)
    assert y.is_contiguous() and y.dtype == torch.float32
    ref = reference.channel_layer_norm(*[t.double() for t in (x, w, b)], 1e-6)
    assert _relerr(y, ref) < 1e-5
    gy = torch.randn_like(y)
    gs = torch.autograd.grad(y, (x, w, b), gy)
    rs = torch.autograd.grad(ref, (x, w, b), gy.double())
    assert max(_relerr(g, r) for g, r in zip(gs, rs)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gpu(backend, dtype):
    """fp16 / bf16 on the GPU with fp32 statistics: within the input dtype's rounding of the fp64 result."""
    name, dev = backend
    if dev.type != "cuda":
        pytest.skip("half precision runs on the GPU backends only")
    x, w, b = inputs(2, 64, 17, 33, dtype, dev)
    y = ek.channel_layer_norm(x, w, b, 1e-5, backend=name)
    assert y.dtype == dtype
    ref = reference.channel_layer_norm(x.double(), w.double(), b.double(), 1e-5)
    assert _relerr(y, ref) < (4e-3 if dtype == torch.float16 else 3e-2)


def test_cpu_stash_and_recompute_agree_bitwise():
    """The CPU backward from the forward's stash (mean, rstd) equals the one that recomputes them, bit for bit,
    and so do 1 and 2 threads (fixed-order weight-gradient partials)."""
    if not ek.backend_status("cpu")[0]:
        pytest.skip("cpu backend unavailable")
    x, w, b = inputs(2, 64, 13, 29, torch.float32, "cpu")
    gy = torch.randn_like(x)
    y, stash = torch.ops.eimn_C.channel_layer_norm_forward_stash(x, w, b, 1e-5)
    assert torch.equal(y, torch.ops.eimn_C.channel_layer_norm_forward(x, w, b, 1e-5))
    assert stash.shape == (2 * 2 * 13 * 29,)
    a = torch.ops.eimn_C.channel_layer_norm_backward_stash(gy, x, w, b, stash, 1e-5)
    old = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(torch.ops.eimn_C.channel_layer_norm_backward(gy, x, w, b, 1e-5))
    finally:
        torch.set_num_threads(old)
    for r in outs:
        assert all(torch.equal(p, q) for p, q in zip(a, r))


def test_opcheck(backend):
    name, dev = backend
    x, w, b = inputs(2, 6, 3, 4, torch.float64, dev)
    gy = torch.randn_like(x)
    for keep in (False, True):
        torch.library.opcheck(torch.ops.eimn_kernels.channel_layer_norm, (x, w, b, 1e-5, keep, name))
        _, stash = torch.ops.eimn_kernels.channel_layer_norm(x, w, b, 1e-5, keep, name)
        torch.library.opcheck(torch.ops.eimn_kernels.channel_layer_norm_backward, (gy, x, w, b, stash, 1e-5, name),
                              test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph(backend):
    name, dev = backend
    x, w, b = inputs(2, 8, 3, 5, torch.float32, dev)
    f = lambda t: ek.channel_layer_norm(t, w, b, 1e-5, backend=name) * 2.0  # noqa: E731
    torch._dynamo.reset()
    fn = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(fn(x), f(x))
    xg, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    fn(xg).sum().backward()
    f(xr).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)


def test_any_memory_layout(backend):
    """channels_last and non-contiguous inputs give the contiguous input's result."""
    name, dev = backend
    x, w, b = inputs(2, 8, 4, 6, torch.float64, dev)
    ref = ek.channel_layer_norm(x, w, b, backend=name)
    torch.testing.assert_close(ek.channel_layer_norm(x.to(memory_format=torch.channels_last), w, b, backend=name),
                               ref, rtol=0, atol=0)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    torch.testing.assert_close(ek.channel_layer_norm(xt, w, b, backend=name), ref, rtol=0, atol=0)


def test_bad_input_errors(backend):
    name, dev = backend
    x, w, b = inputs(1, 4, 3, 3, torch.float32, dev)
    with pytest.raises(ValueError, match="4-d"):
        ek.channel_layer_norm(x[0], w, b, backend=name)
    with pytest.raises(ValueError, match="weight must have shape"):
        ek.channel_layer_norm(x, w[:3], b, backend=name)
    with pytest.raises(TypeError, match="bias has dtype"):
        ek.channel_layer_norm(x, w, b.double(), backend=name)
    with pytest.raises(TypeError, match="floating"):
        ek.channel_layer_norm(x.long(), w, b, backend=name)


def test_cpp_kernel_checks():
    """The C++ kernels check their inputs themselves (called directly, not through the Python op)."""
    if not ek.backend_status("cpu")[0]:
        pytest.skip("cpu backend unavailable")
    x, w, b = inputs(1, 4, 3, 3, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="weight must have shape"):
        torch.ops.eimn_C.channel_layer_norm_forward(x, w[:2], b, 1e-5)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.eimn_C.channel_layer_norm_forward(x.half(), w.half(), b.half(), 1e-5)
    with pytest.raises(RuntimeError, match="grad_y"):
        torch.ops.eimn_C.channel_layer_norm_backward(x[:, :2], x, w, b, 1e-5)
    with pytest.raises(RuntimeError, match="stash"):
        torch.ops.eimn_C.channel_layer_norm_backward_stash(x, x, w, b, x.flatten()[:5], 1e-5)


def test_module_from_layer_norm_and_fuse_swaps_eimn_norms():
    """fuse() swaps EIMN's norm1..normN (same Parameter objects, same state_dict), not other LayerNorms; the fused
    model's output and gradients match the original's."""
    torch.manual_seed(0)
    m = EIMN(embed_dims=16, scale=2, num_stages=2)
    extra = torch.nn.Sequential(m, torch.nn.LayerNorm(8))  # a LayerNorm the model does not name: left alone
    f = ek.fuse(copy.deepcopy(extra), backend="cpu" if ek.backend_status("cpu")[0] else "reference")
    assert isinstance(f[0].norm1, ek.ChannelLayerNorm) and isinstance(f[0].norm2, ek.ChannelLayerNorm)
    assert type(f[1]) is torch.nn.LayerNorm
    assert list(f.state_dict()) == list(extra.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(f.state_dict().values(), extra.state_dict().values()))
    img = torch.rand(2, 3, 9, 11)
    ref, out = m(img), f[0](img)
    assert _relerr(out, ref) < 1e-5
    gr = torch.autograd.grad(ref.square().sum(), m.norm1.weight)[0]
    go = torch.autograd.grad(out.square().sum(), f[0].norm1.weight)[0]
    assert _relerr(go, gr) < 1e-4
    with pytest.raises(ValueError, match="nn.LayerNorm"):
        ek.ChannelLayerNorm.from_module(torch.nn.LayerNorm(8, elementwise_affine=False))


def test_optimize_for_inference_uses_the_fused_norm():
    """The LayerNorms between blocks become ChannelLayerNorm, held by the folded block before them (the CPU kernels
    apply them in the SADFFM's last pass; test_fuse checks that path)."""
    m = EIMN(embed_dims=16, scale=2, num_stages=2).eval()
    opt = ek.optimize_for_inference(m, backend="cpu" if ek.backend_status("cpu")[0] else "reference")
    assert isinstance(opt.block2[0].norm, ek.ChannelLayerNorm) and type(opt.norm2).__name__ == "FusedAway"
    img = torch.rand(1, 3, 8, 10)
    with torch.no_grad():
        assert _relerr(opt(img), m(img)) < 1e-5


def test_autocast_dtype_like_layer_norm():
    """Under autocast ChannelLayerNorm returns the dtype nn.LayerNorm returns there: float32 on CUDA (autocast's
    float32 list: EIMN's residual stream stays float32), the input's dtype on CPU."""
    devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devs:
        ln = torch.nn.LayerNorm(8).to(dev)
        m = ek.ChannelLayerNorm.from_module(ln)  # backend auto: a kernel where the dtype has one, else reference
        for dt in (torch.float32, torch.bfloat16):
            x = torch.randn(1, 8, 3, 4, device=dev).to(dt)
            with torch.autocast(dev, dtype=torch.bfloat16):
                ref = ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
                out = m(x)
            assert out.dtype == ref.dtype, (dev, dt)
            torch.testing.assert_close(out, ref.contiguous(), rtol=2e-2 if ref.dtype == torch.bfloat16 else 1e-5,
                                       atol=2e-2 if ref.dtype == torch.bfloat16 else 1e-5)
