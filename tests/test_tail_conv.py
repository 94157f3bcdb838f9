"""The SR tail on CPU (eimn_kernels.tail_conv, eimn_C::conv3x3_shuffle_forward): a 3x3 'same' conv and the
PixelShuffle after it in one C++ pass, the same values as F.pixel_shuffle(F.conv2d(...)) (fp32 within 1e-5 relative,
fp64 within 1e-12), independent of the thread count, clear errors for bad shapes, the eager path wherever the kernel
does not apply, and optimize_for_inference fusing EIMN's tail and upsampler (same state_dict keys)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import eimn_kernels as ek
from eimn_kernels.tail_conv import ShuffleConv2d, ShuffledAway, use_tail_convs

needs_cpu = pytest.mark.skipif(not ek.backend_status("cpu", "cpu")[0], reason="the cpu backend is not built")


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _case(N, C, H, W, Co, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g).to(dtype)
    w = (torch.randn(Co, C, 3, 3, generator=g) * 0.1).to(dtype)
    b = torch.randn(Co, generator=g).to(dtype)
    return x, w, b


# widths: whole segment pairs (32), an odd segment count (48), a partial last segment (37, 426 % 16), narrower than
# one segment (5), one pixel; EIMN's x4 (48 channels, r 4) and x3 (27, r 3) tails, r 2 and the plain conv (r 1)
SHAPES = [(1, 64, 7, 32, 48, 4), (2, 64, 5, 37, 27, 3), (1, 16, 6, 48, 8, 2), (1, 8, 9, 5, 12, 1),
          (2, 3, 1, 1, 4, 2), (1, 64, 4, 426, 27, 3), (1, 20, 3, 17, 45, 3)]


@needs_cpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=str)
@pytest.mark.parametrize("N,C,H,W,Co,r", SHAPES)
def test_conv3x3_shuffle_cpu_matches_reference(dtype, tol, N, C, H, W, Co, r):
    x, w, b = _case(N, C, H, W, Co, dtype)
    got = torch.ops.eimn_C.conv3x3_shuffle_forward(x, w, b, r)
    want = F.pixel_shuffle(F.conv2d(x.double(), w.double(), b.double(), padding=1), r)
    assert got.shape == want.shape and got.dtype == dtype
    assert _rel(got, want) <= tol
    got_cl = torch.ops.eimn_C.conv3x3_shuffle_forward(x.to(memory_format=torch.channels_last), w, b, r)
    assert torch.equal(got_cl, got)


@needs_cpu
def test_conv3x3_shuffle_cpu_same_bits_for_any_thread_count():
    x, w, b = _case(2, 24, 11, 40, 27, torch.float32, seed=3)
    n = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(torch.ops.eimn_C.conv3x3_shuffle_forward(x, w, b, 3))
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@needs_cpu
def test_conv3x3_shuffle_cpu_clear_errors():
    x, w, b = _case(1, 8, 4, 4, 12, torch.float32)
    op = torch.ops.eimn_C.conv3x3_shuffle_forward
    with pytest.raises(RuntimeError, match="upscale factor r must be >= 1 and divide the 12 output channels"):
        op(x, w, b, 3)
    with pytest.raises(RuntimeError, match="upscale factor"):
        op(x, w, b, 0)
    with pytest.raises(RuntimeError, match=r"w must have shape \[12, 8, 3, 3\]"):
        op(x, w[:, :, :2], b, 2)
    with pytest.raises(RuntimeError, match="b must have shape"):
        op(x, w, b[:5], 2)
    with pytest.raises(RuntimeError, match="w has dtype"):
        op(x, w.double(), b, 2)
    with pytest.raises(RuntimeError, match="x is empty"):
        op(x[:, :, :0], w, b, 2)


@needs_cpu
def test_shuffle_conv_module_kernel_and_fallbacks():
    """ShuffleConv2d: conv + PixelShuffle; the C++ pass without autograd, nn.Conv2d's forward + F.pixel_shuffle with
    it (gradients for the input and the shared parameters) and for dtypes the kernel does not take."""
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 12, 3, padding=1)
    sc = ShuffleConv2d.from_conv(conv, 2)
    assert sc.weight is conv.weight and sc.bias is conv.bias and "upscale=2" in repr(sc)
    x = torch.randn(2, 16, 9, 11)
    with torch.no_grad():
        assert sc.runs_kernel(x)
        assert _rel(sc(x), F.pixel_shuffle(conv(x), 2)) <= 1e-5
    xg = x.clone().requires_grad_()
    assert not sc.runs_kernel(xg)
    y = sc(xg)
    y.sum().backward()
    assert xg.grad is not None and conv.weight.grad is not None
    assert torch.equal(y, F.pixel_shuffle(conv(xg), 2))
    with torch.no_grad():
        assert not sc.to(torch.bfloat16).runs_kernel(x.bfloat16())
    with pytest.raises(ValueError, match="must divide"):
        ShuffleConv2d.from_conv(nn.Conv2d(16, 12, 3, padding=1), 3)
    with pytest.raises(ValueError, match="3x3, stride 1, padding 1"):
        ShuffleConv2d.from_conv(nn.Conv2d(16, 12, 3, padding=0), 2)


def test_use_tail_convs_needs_the_models_word():
    """Only models whose forward applies upsample right after tail (upsample_follows_tail) are changed."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.tail = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1))
            self.upsample = nn.PixelShuffle(2)
    net = Net()
    assert use_tail_convs(net) == 0 and type(net.tail[0]) is nn.Conv2d
    net.upsample_follows_tail = True
    keys = list(net.state_dict())
    assert use_tail_convs(net) == 1
    assert type(net.tail[0]) is ShuffleConv2d and type(net.upsample) is ShuffledAway
    assert list(net.state_dict()) == keys
    assert use_tail_convs(net) == 0  # nothing left to fuse


@needs_cpu
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_optimize_for_inference_fuses_eimns_tail(scale):
    from eimn.model import EIMN
    torch.manual_seed(2)
    eager = EIMN(embed_dims=16, scale=scale, num_stages=2).eval()
    model = ek.optimize_for_inference(eager)
    assert type(model.tail[0]) is ShuffleConv2d and type(model.upsample) is ShuffledAway
    assert type(ek.optimize_for_inference(eager, fused=False).tail[0]) is nn.Conv2d  # the ONNX export's form
    x = torch.rand(1, 3, 12, 21)
    with torch.no_grad():
        assert _rel(model(x), eager(x)) <= 1e-5
