"""Large-kernel attention (VAN's LKA and attention block): the conv1x1 op, ek.lka / ek.lka_attention, the fused
modules and fuse() on a VAN-style block written here from the paper, on every backend that runs here (reference,
cpu; triton under TRITON_INTERPRET=1), against plain PyTorch. fp64 gradcheck; fp32 forward <= 1e-5 relative;
gradients <= 1e-4 relative."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import eimn_kernels as ek
from conftest import kernel_backends

BACKENDS = ["reference"] + kernel_backends("cpu")
# The Triton interpreter costs ~50 ms a program: its backend gets the one case per test marked here, small shapes.
FAST = [b for b in BACKENDS if b != "triton"]


# ----------------------------------------------------------------------------- VAN, as the paper describes it
class EagerLKA(nn.Module):
    def __init__(self, dim, k0=5, k1=7, d=3):
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, k0, padding=k0 // 2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, k1, padding=d * (k1 - 1) // 2, groups=dim, dilation=d)
        self.conv1 = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        return x * self.conv1(self.conv_spatial(self.conv0(x)))


class EagerAttention(nn.Module):
    def __init__(self, dim, **kw):
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = EagerLKA(dim, **kw)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        return self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x)))) + x


class VANBlock(nn.Module):
    """BN -> attention -> layer scale residual; BN -> MLP (1x1, depthwise 3x3, GELU, 1x1) -> layer scale residual."""

    def __init__(self, dim, mlp_ratio=4, **kw):
        super().__init__()
        self.norm1, self.norm2 = nn.BatchNorm2d(dim), nn.BatchNorm2d(dim)
        self.attn = EagerAttention(dim, **kw)
        hid = dim * mlp_ratio
        self.mlp = nn.Sequential(nn.Conv2d(dim, hid, 1), nn.Conv2d(hid, hid, 3, padding=1, groups=hid), nn.GELU(),
                                 nn.Conv2d(hid, dim, 1))
        self.layer_scale_1 = nn.Parameter(0.5 * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(0.5 * torch.ones(dim))

    def forward(self, x):
        x = x + self.layer_scale_1[:, None, None] * self.attn(self.norm1(x))
        return x + self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x))


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _seeded(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m


# ----------------------------------------------------------------------------- conv1x1
@pytest.mark.parametrize("backend,act,gate,res", [
    (b, a, g, r) for b in FAST for a in ("none", "gelu") for g in (False, True) for r in (False, True)]
    + [("triton", "gelu", True, True)] * ("triton" in BACKENDS))
def test_conv1x1_gradcheck_fp64(backend, act, gate, res):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, 1, 1, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    gt = torch.randn(2, 3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    rt = torch.randn(2, 3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)

    def f(x, w, b, gt, rt):
        return ek.conv1x1(x, w, b, act=act, gate=gt if gate else None, residual=rt if res else None, backend=backend)
    assert torch.autograd.gradcheck(f, (x, w, b, gt, rt))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_conv1x1_opcheck(backend):
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(2, 6, 5, 4, generator=g), torch.randn(4, 6, 1, 1, generator=g), torch.randn(4, generator=g)
    gate, res, none = torch.randn(2, 4, 5, 4, generator=g), torch.randn(2, 4, 5, 4, generator=g), torch.empty(0)
    for args in ((x, w, b, gate, res, 1), (x, w, b, none, none, 0), (x, w, b, gate, none, 0)):
        torch.library.opcheck(torch.ops.eimn_kernels.conv1x1, (*args, backend))


def test_conv1x1_bad_input():
    x, w, b = torch.randn(1, 4, 3, 3), torch.randn(2, 4, 1, 1), torch.randn(2)
    with pytest.raises(ValueError, match="act must be"):
        ek.conv1x1(x, w, b, act="relu")
    with pytest.raises(ValueError, match="w must have shape"):
        ek.conv1x1(x, torch.randn(2, 3, 1, 1), b)
    with pytest.raises(ValueError, match="gate must have shape"):
        ek.conv1x1(x, w, b, gate=torch.randn(1, 4, 3, 3))
    with pytest.raises(TypeError, match="dtype"):
        ek.conv1x1(x, w, b, residual=torch.randn(1, 2, 3, 3, dtype=torch.float64))
    if "cpu" in BACKENDS:
        with pytest.raises(RuntimeError, match="act must be"):
            torch.ops.eimn_C.conv1x1_forward(x, w, b, torch.empty(0), torch.empty(0), 3)


# ----------------------------------------------------------------------------- LKA, attention
CASES = [(8, dict()), (13, dict(k0=3, k1=5, d=2)), (16, dict(k0=7, k1=9, d=4)), (6, dict(k0=5, k1=11, d=1))]


@pytest.mark.parametrize("backend,dim,kw", [(b, d, k) for b in FAST for d, k in CASES]
                         + [("triton", *CASES[0])] * ("triton" in BACKENDS))
def test_lka_and_attention_match_eager_fp32(backend, dim, kw):
    torch.manual_seed(0)
    x = torch.randn(2, dim, 17, 14)
    for Eager, Fused in ((EagerLKA, ek.LKA), (EagerAttention, ek.LKAAttention)):
        eager = _seeded(Eager(dim, **kw))
        fused = Fused.from_module(eager, backend=backend)
        assert list(fused.state_dict()) == list(eager.state_dict())
        with torch.no_grad():
            assert _rel(fused(x), eager(x)) <= 1e-5
        xg = x.clone().requires_grad_()
        fused(xg).square().sum().backward()
        gf = [xg.grad] + [p.grad for p in fused.parameters()]
        eager.zero_grad()
        xe = x.clone().requires_grad_()
        eager(xe).square().sum().backward()
        ge = [xe.grad] + [p.grad for p in eager.parameters()]
        for a, e in zip(gf, ge):
            assert _rel(a, e) <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_lka_attention_gradients_fp64(backend):
    """gradcheck of the whole block (cpu, reference); for the Triton interpreter, whose calls cost ~50 ms a program,
    its fp64 gradients against the eager block's (the conv1x1 and dw_mix ops are gradchecked on their own)."""
    torch.manual_seed(3)
    m = _seeded(EagerAttention(5, k0=3, k1=5, d=2)).double()
    fused = ek.LKAAttention.from_module(m, backend=backend)
    x = torch.randn(1, 5, 7, 6, dtype=torch.float64, requires_grad=True)
    params = [p for p in fused.parameters()]

    def f(x, *ps):
        return torch.func.functional_call(fused, {n: p for (n, _), p in zip(fused.named_parameters(), ps)}, (x,))
    if backend != "triton":
        assert torch.autograd.gradcheck(f, (x, *params))
        return
    got = torch.autograd.grad(f(x, *params).square().sum(), (x, *params))
    eager = _seeded(EagerAttention(5, k0=3, k1=5, d=2)).double()
    want = torch.autograd.grad(eager(x).square().sum(), (x, *eager.parameters()))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_fuse_recognises_van_blocks_and_keeps_state_dict():
    torch.manual_seed(0)
    net = nn.Sequential(VANBlock(16), VANBlock(16, k0=3, k1=5, d=2), nn.Sequential(EagerLKA(16)))
    net = _seeded(net).eval()
    keys = list(net.state_dict())
    x = torch.randn(1, 16, 20, 18)
    with torch.no_grad():
        want = net(x)
    ek.fuse(net, backend=BACKENDS[-1])
    assert isinstance(net[0].attn, ek.LKAAttention) and isinstance(net[1].attn, ek.LKAAttention)
    assert isinstance(net[2][0], ek.LKA) and net[0].attn.spatial_gating_unit.backend == BACKENDS[-1]
    assert list(net.state_dict()) == keys
    with torch.no_grad():
        assert _rel(net(x), want) <= 1e-5
    # not LKA-shaped: strided, or approximate GELU, or channel-changing: left alone
    odd = EagerAttention(8)
    odd.activation = nn.GELU(approximate="tanh")
    lka2 = EagerLKA(8)
    lka2.conv_spatial.stride = (2, 2)
    holder = nn.Sequential(odd, lka2)
    ek.fuse(holder)
    assert type(holder[0]) is EagerAttention and type(holder[1]) is EagerLKA
    assert type(holder[0].spatial_gating_unit) is ek.LKA  # its LKA on its own is still one


def test_compile_fullgraph_fused_attention():
    torch.manual_seed(0)
    m = ek.LKAAttention.from_module(_seeded(EagerAttention(8)), backend=BACKENDS[-1]).eval()
    x = torch.randn(1, 8, 12, 10)
    torch._dynamo.reset()
    f = torch.compile(m, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(f(x), m(x))


@pytest.mark.parametrize("fused,backend", [(False, "auto")] + [(True, b) for b in FAST[1:] + BACKENDS[-1:]
                                                                  if b != "reference"] + [(True, "reference")])
def test_optimize_for_inference_folds_van_blocks(fused, backend):
    """optimize_for_inference on VAN-style blocks (BatchNorms with moved statistics, layer scales away from 1e-2)
    and a Conv2d + BatchNorm2d patch embedding: every block becomes a FoldedLKABlock, the BN after the conv an
    Identity, output within 1e-5 of eager in fp32, on each backend (cpu: the C++ ops straight and the ConvMLP kernel;
    others: the functional ops, the MLP's depthwise conv as dw_mix from a width of 32, PyTorch's below)."""
    from eimn_kernels.lka_inference import FoldedLKABlock
    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)),
                        VANBlock(16), VANBlock(16, k0=3, k1=5, d=2))
    net = _seeded(net)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    net.eval()
    opt = ek.optimize_for_inference(net, backend=backend, fused=fused)
    assert isinstance(opt[0][1], nn.Identity)
    assert isinstance(opt[1], FoldedLKABlock) and isinstance(opt[2], FoldedLKABlock)
    for hw in ((9, 13), (8, 33)):
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            assert _rel(opt(x), net(x)) <= 1e-5, hw
    # the original is untouched
    assert isinstance(net[0][1], nn.BatchNorm2d) and isinstance(net[1], VANBlock)


def test_compile_fullgraph_folded_van_block():
    """torch.compile(fullgraph=True) traces a folded VAN block: while compiling it takes the custom ops (with fake
    impls), not the C++ kernels called straight; same output as the eager folded block."""
    torch.manual_seed(0)
    opt = ek.optimize_for_inference(_seeded(nn.Sequential(VANBlock(16))).eval(), backend=BACKENDS[-1])
    x = torch.randn(1, 16, 12, 10)
    torch._dynamo.reset()
    with torch.no_grad():
        assert _rel(torch.compile(opt, fullgraph=True)(x), opt(x)) <= 1e-5


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the cpu backend is not built")
@pytest.mark.parametrize("case", [(2, 16, 40, 16, 9, 13, 3, True), (1, 7, 30, 5, 5, 33, 5, False),
                                  (1, 8, 64, 8, 1, 1, 3, True), (1, 12, 24, 12, 40, 6, 7, True)],
                         ids=["batch2", "Co!=C-K5", "1x1-image", "tall-K7"])
def test_convmlp_infer_op_matches_eager(case):
    """eimn_C::convmlp_infer_forward (VAN's MLP in one CPU kernel, inference): 1x1 -> depthwise KxK -> GELU -> 1x1
    [+ x] against PyTorch, float64 exact to rounding, float32 <= 1e-5 relative; partial hidden groups (40, 30, 24
    channels: groups of 12), odd sizes and widths past one GEMM panel."""
    N, C, hid, Co, H, W, K, add = case
    g = torch.Generator().manual_seed(sum(case[:6]))
    for dt, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dt)  # noqa: E731
        x, w1, b1 = r(N, C, H, W), r(hid, C, 1, 1) * 0.3, r(hid)
        wdw, bdw, w2, b2 = r(hid, 1, K, K) * 0.3, r(hid), r(Co, hid, 1, 1) * 0.2, r(Co)
        want = F.conv2d(F.gelu(F.conv2d(F.conv2d(x, w1, b1), wdw, bdw, padding=K // 2, groups=hid)), w2, b2)
        if add:
            want = want + x
        got = torch.ops.eimn_C.convmlp_infer_forward(x, w1, b1, wdw, bdw, w2, b2, add)
        assert _rel(got, want) <= tol, (dt, _rel(got, want))
    with pytest.raises(RuntimeError, match="add_input"):
        torch.ops.eimn_C.convmlp_infer_forward(x, w1, b1, wdw, bdw, r(C + 1, hid, 1, 1), r(C + 1), True)
    with pytest.raises(RuntimeError, match="odd"):
        torch.ops.eimn_C.convmlp_infer_forward(x, w1, b1, r(hid, 1, 2, 2), bdw, w2, b2, add)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the cpu backend is not built")
def test_convmlp_infer_op_same_bits_for_any_thread_count():
    """A small image splits the hidden channels into slices summed in a fixed order: the result does not depend on
    the number of threads (1 vs 2 bitwise)."""
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    args = (r(1, 40, 7, 7), r(160, 40, 1, 1) * 0.2, r(160), r(160, 1, 3, 3) * 0.3, r(160), r(40, 160, 1, 1) * 0.1,
            r(40), True)
    before = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            outs.append(torch.ops.eimn_C.convmlp_infer_forward(*args))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the cpu backend is not built")
def test_lka_ops_call_the_cpu_kernels_straight_without_autograd(monkeypatch):
    """Without autograd, ek.lka / ek.lka_attention on CPU call the C++ kernels straight (no custom-op dispatch):
    the same bits as the custom ops' path, which they take when an input needs a gradient; bad weights still stop
    with an error naming them."""
    import sys
    lka_ops = sys.modules["eimn_kernels.ops.lka"]  # the module (eimn_kernels.ops.lka is the function)
    torch.manual_seed(0)
    m = _seeded(EagerAttention(12, k0=3, k1=5, d=2))
    sgu = m.spatial_gating_unit
    w_lka = [sgu.conv0.weight, sgu.conv0.bias, sgu.conv_spatial.weight, sgu.conv_spatial.bias, sgu.conv1.weight,
             sgu.conv1.bias]
    w_att = [m.proj_1.weight, m.proj_1.bias, *w_lka, m.proj_2.weight, m.proj_2.bias]
    x = torch.randn(2, 12, 9, 11)
    xg = x.clone().requires_grad_()
    want_lka, want_att = ek.lka(xg, *w_lka, 2, backend="cpu"), ek.lka_attention(xg, *w_att, 2, backend="cpu")

    def no_custom_op(*a, **k):
        raise AssertionError("the custom op was called")
    monkeypatch.setattr(lka_ops, "_conv1x1_op", no_custom_op)
    with torch.no_grad():
        assert torch.equal(ek.lka(x, *w_lka, 2, backend="cpu"), want_lka.detach())
        assert torch.equal(ek.lka_attention(x, *w_att, 2, backend="cpu"), want_att.detach())
        assert torch.equal(ek.LKAAttention.from_module(m, backend="cpu")(x), want_att.detach())
        bad = torch.randn(11, 1, 3, 3)  # conv0 with one channel too few
        with pytest.raises((RuntimeError, ValueError), match="w0"):
            ek.lka_attention(x, *w_att[:2], bad, *w_att[3:], 2, backend="cpu")
        with pytest.raises((RuntimeError, ValueError), match="w1"):
            ek.lka(x, *w_lka[:4], torch.randn(12, 11, 1, 1), w_lka[5], 2, backend="cpu")
    with pytest.raises(AssertionError, match="custom op"):  # autograd needs the custom ops
        ek.lka(xg, *w_lka, 2, backend="cpu")
