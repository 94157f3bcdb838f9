"""The image stem on CPU (eimn_kernels.stem_conv): a 3x3 conv of <= 4 channels as im2col + the CPU GEMM, the same
convolution as nn.Conv2d (fp32 within 1e-5 relative, fp64 within 1e-12), nn.Conv2d's own forward wherever the GEMM
path does not apply, and optimize_for_inference using it for EIMN's head."""
import pytest
import torch
import torch.nn as nn

import eimn_kernels as ek
from eimn_kernels.stem_conv import StemConv2d, is_stem_conv, use_stem_convs

needs_cpu = pytest.mark.skipif(not ek.backend_status("cpu", "cpu")[0], reason="the cpu backend is not built")


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@needs_cpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=str)
@pytest.mark.parametrize("cin,cout,N,H,W,bias", [(3, 64, 1, 37, 53, True), (1, 8, 2, 5, 3, False),
                                                 (4, 20, 3, 1, 17, True), (3, 48, 1, 16, 32, True)])
def test_stem_conv_matches_conv2d(dtype, tol, cin, cout, N, H, W, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias).to(dtype)
    stem = StemConv2d.from_conv(conv)
    x = torch.randn(N, cin, H, W, dtype=dtype)
    with torch.no_grad():
        assert stem.runs_gemm(x)
        got, want = stem(x), conv(x)
        got_cl = stem(x.to(memory_format=torch.channels_last))
    assert got.shape == want.shape and got.dtype == dtype
    assert _rel(got, want) <= tol and _rel(got_cl, want) <= tol


@needs_cpu
def test_stem_conv_falls_back_where_the_gemm_does_not_apply():
    """Grad mode on: nn.Conv2d's forward (gradients for the input and the shared parameters); a bfloat16 input
    likewise."""
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 16, 3, padding=1)
    stem = StemConv2d.from_conv(conv)
    assert stem.weight is conv.weight and stem.bias is conv.bias
    x = torch.randn(2, 3, 9, 11, requires_grad=True)
    assert not stem.runs_gemm(x)
    y = stem(x)
    y.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    assert torch.equal(y, conv(x))
    with torch.no_grad():
        xb = x.detach().bfloat16()
        assert not stem.to(torch.bfloat16).runs_gemm(xb)


def test_which_convs_are_stems():
    assert is_stem_conv(nn.Conv2d(3, 64, 3, padding=1))
    for other in (nn.Conv2d(8, 64, 3, padding=1), nn.Conv2d(3, 64, 5, padding=2), nn.Conv2d(3, 64, 3, stride=2,
                  padding=1), nn.Conv2d(3, 64, 3, padding=1, padding_mode="reflect"), nn.Conv2d(3, 3, 3, padding=1,
                  groups=3), nn.Conv2d(3, 64, 3, padding=2, dilation=2)):
        assert not is_stem_conv(other)
    with pytest.raises(ValueError, match="StemConv2d takes"):
        StemConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)))
    keys = list(model.state_dict())
    assert use_stem_convs(model) == 1
    assert type(model[0]) is StemConv2d and type(model[1][0]) is nn.Conv2d
    assert list(model.state_dict()) == keys


@needs_cpu
def test_optimize_for_inference_runs_the_head_as_a_stem():
    from eimn.model import EIMN
    torch.manual_seed(2)
    eager = EIMN(embed_dims=16, scale=2, num_stages=2).eval()
    model = ek.optimize_for_inference(eager)
    assert type(model.head[0]) is StemConv2d
    assert type(ek.optimize_for_inference(eager, fused=False).head[0]) is nn.Conv2d  # the ONNX export's form
    x = torch.rand(1, 3, 12, 20)
    with torch.no_grad():
        assert _rel(model(x), eager(x)) <= 1e-5
