"""The NHWC whole-block inference kernels (eimn_kernels/nhwc.py, triton_kernels/block_*.py) against the folded eager
block, here under TRITON_INTERPRET=1 (on a GPU: CUDA tensors).

Tolerances: float32 max |diff| <= 1e-5 relative to max |ref| (3xTF32 dots on a GPU, exact fp32 in the
interpreter); float16 <= 2e-3 and bfloat16 <= 1.5e-2 relative to max |ref| in the mean, 1e-2 / 2e-2 max (operands
rounded to the half type, float32 accumulation; the reference runs in float32 on the same rounded input).
Small shapes: the interpreter runs each program in Python (a C = 64 block at 1x9x19 takes ~10 s).
"""
import copy
import os

import pytest
import torch

from _perturbed import perturbed_eimn
from eimn_kernels import optimize_for_inference
from eimn_kernels.nhwc import FusedAway, NHWCEIMNBlock, block_forward, use_nhwc_blocks

pytest.importorskip("triton")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs a CUDA device or TRITON_INTERPRET=1")


def _model(C: int, stages: int, seed: int = 0):
    return perturbed_eimn(C, stages, seed)


def _close(out, ref, dt):
    err = (out.float() - ref.float()).abs()
    scale = ref.abs().max().item()
    if dt == torch.float32:
        assert err.max().item() <= 1e-5 * scale, (err.max().item(), scale)
    else:
        mean_tol, max_tol = (2e-3, 1e-2) if dt == torch.float16 else (1.5e-2, 2e-2)
        assert err.mean().item() <= mean_tol * scale and err.max().item() <= max_tol * scale * 4, \
            (err.mean().item(), err.max().item(), scale)


@torch.no_grad()
def test_model_fp32_matches_folded():
    """A 2-block EIMN (C = 16): every block and LayerNorm swapped, output equal to the folded eager model."""
    m = _model(16, 2)
    ref_model = optimize_for_inference(m, fused=False).to(DEV)
    fast = optimize_for_inference(m, fused=False).to(DEV)
    assert use_nhwc_blocks(fast) == 2
    assert isinstance(fast.block1[0], NHWCEIMNBlock) and isinstance(fast.norm2, FusedAway)
    x = torch.rand(2, 3, 7, 17, device=DEV)  # two images: per-image DFFM statistics
    _close(fast(x), ref_model(x), torch.float32)


@torch.no_grad()
@pytest.mark.parametrize("dt", [torch.float32, torch.float16, torch.bfloat16])
def test_block_eimn_width(dt):
    """One block at EIMN's width (C = 64: split 24/8/32, hidden 170, DFFM 16), partial tiles, in each dtype."""
    m = _model(64, 1, seed=1)
    f = optimize_for_inference(m, fused=False).to(DEV)
    use_nhwc_blocks(f)
    blk = f.block1[0]
    x = torch.randn(1, 64, 9, 19, device=DEV)
    ref = blk._fallback(x.to(dt).float())
    fast = copy.deepcopy(blk).to(dt)
    out = fast(x.to(dt))
    assert out.dtype == dt and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    _close(out, ref, dt)


@torch.no_grad()
def test_fallbacks_and_errors():
    m = _model(16, 1, seed=2)
    f = optimize_for_inference(m, fused=False)
    use_nhwc_blocks(f)
    blk = f.block1[0]
    b64 = copy.deepcopy(blk).double()
    x = torch.randn(1, 16, 6, 7, dtype=torch.float64)
    # float64 runs the folded layers (the kernels take fp32 / fp16 / bf16)
    torch.testing.assert_close(b64(x), b64._fallback(x))
    with pytest.raises(ValueError, match="NHWC contiguous"):
        block_forward(torch.randn(1, 6, 7, 16).transpose(1, 2), blk._pack(torch.float32, torch.device("cpu")))
    assert block_forward(torch.randn(0, 6, 7, 16), blk._pack(torch.float32, torch.device("cpu"))).shape == (0, 6, 7, 16)


def test_autograd_runs_the_folded_layers():
    """With a gradient needed the block runs its folded layers (the kernels have no backward)."""
    m = _model(16, 1, seed=3)
    f = optimize_for_inference(m, fused=False)
    use_nhwc_blocks(f)
    blk = f.block1[0]
    x = torch.randn(1, 16, 5, 6, requires_grad=True)
    y = blk(x)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@torch.no_grad()
def test_weights_repacked_after_an_update():
    m = _model(16, 1, seed=4)
    f = optimize_for_inference(m, fused=False).to(DEV)
    use_nhwc_blocks(f)
    blk = f.block1[0]
    x = torch.randn(1, 16, 5, 6, device=DEV)
    blk(x)
    blk.block.mlp.linear_out.bias.add_(0.5)
    _close(blk(x), blk._fallback(x), torch.float32)


@torch.no_grad()
def test_optimize_for_inference_nhwc():
    """optimize_for_inference(nhwc=True) on the fused model: blocks on the kernels (the default on a CUDA device),
    the same output as without; nhwc=False keeps the folded blocks."""
    m = _model(16, 1, seed=5).to(DEV)
    fast = optimize_for_inference(m, nhwc=True)
    plain = optimize_for_inference(m, nhwc=False)
    assert isinstance(fast.block1[0], NHWCEIMNBlock) and not isinstance(plain.block1[0], NHWCEIMNBlock)
    if DEV == "cuda":
        assert isinstance(optimize_for_inference(m).block1[0], NHWCEIMNBlock)
    x = torch.rand(1, 3, 6, 9, device=DEV)
    _close(fast(x), plain(x), torch.float32)


def test_backend_resolution():
    """auto takes the CUDA block kernels only for CUDA tensors of EIMN's dim 64 blocks where the extension has them;
    a forced 'cuda' that cannot run says why; anything else is refused."""
    from eimn_kernels.nhwc import cuda_block_available, cuda_block_supports, resolve_backend
    f16 = optimize_for_inference(_model(16, 1, seed=6), fused=False)
    b16 = f16.block1[0]
    from eimn_kernels.triton_kernels.block_pack import pack_block
    pk = pack_block(b16.attn, b16.mlp, b16.layer_scale_2, torch.float32, torch.device("cpu"))
    assert not cuda_block_supports(pk)  # dim 16
    x = torch.zeros(1, 2, 2, 16)
    assert resolve_backend("auto", x, pk) == "triton" and resolve_backend("triton", x, pk) == "triton"
    with pytest.raises(ValueError, match="not a CUDA tensor|no CUDA block kernels|dim 64"):
        resolve_backend("cuda", x, pk)
    with pytest.raises(ValueError, match="auto, cuda or triton"):
        resolve_backend("cudnn", x, pk)
    with pytest.raises(ValueError, match="auto, cuda or triton"):
        NHWCEIMNBlock(b16, None, backend="tensorrt")
    if DEV == "cuda" and cuda_block_available():
        m = optimize_for_inference(_model(64, 1, seed=7), fused=False).to(DEV)
        b = m.block1[0]
        pk64 = pack_block(b.attn, b.mlp, b.layer_scale_2, torch.float32, torch.device(DEV))
        assert cuda_block_supports(pk64) and resolve_backend("auto", torch.zeros(1, 2, 2, 64, device=DEV), pk64) == "cuda"


@torch.no_grad()
@pytest.mark.skipif(DEV != "cuda", reason="the CUDA block kernels run on a GPU (their logic: test_cuda_block_emu.py)")
@pytest.mark.parametrize("dt", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_and_triton_block_kernels_agree(dt):
    """On a GPU: the CUDA block kernels against the folded block, and against the Triton ones, in each dtype."""
    from eimn_kernels.nhwc import cuda_block_available
    if not cuda_block_available():
        pytest.skip("the extension was built without the CUDA block kernels")
    m = _model(64, 1, seed=8)
    f = optimize_for_inference(m, fused=False).to(DEV)
    use_nhwc_blocks(f, "cuda")
    blk = f.block1[0].to(dt)
    tri = copy.deepcopy(blk)
    tri.backend = "triton"
    x = torch.randn(2, 64, 37, 45, device=DEV).to(dt)
    ref = copy.deepcopy(blk).float()._fallback(x.float())
    out_c, out_t = blk(x), tri(x)
    _close(out_c, ref, dt)
    _close(out_t, ref, dt)
    _close(out_c, out_t.float(), dt)


def test_fp32_dot_choice_is_validated_and_kept():
    m = _model(16, 1, seed=9)
    f = optimize_for_inference(m, nhwc=True, fp32_dot="tf32")
    assert f.block1[0].fp32_dot == "tf32"
    assert f.block1[0]._pack(torch.float32, torch.device("cpu")).fp32_dot == "tf32"
    with pytest.raises(ValueError, match="fp32_dot"):
        optimize_for_inference(m, nhwc=True, fp32_dot="fp16")


def test_nhwc_blocks_without_triton_fall_back():
    """Packing and NHWCEIMNBlock need no Triton (a CUDA build may lack it): with ``import triton`` failing, the
    blocks are still built, pack their weights and, where no block kernel can run, run their folded layers."""
    import subprocess
    import sys
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import os; os.environ.pop('TRITON_INTERPRET', None)\n"
        "import torch, sys as _s; _s.path.insert(0, 'tests')\n"
        "from _perturbed import perturbed_eimn\n"
        "from eimn_kernels import optimize_for_inference\n"
        "from eimn_kernels.nhwc import use_nhwc_blocks, triton_runs_on\n"
        "m = perturbed_eimn(16, 1, 0)\n"
        "ref = optimize_for_inference(m, fused=False, nhwc=False)\n"
        "f = optimize_for_inference(m, fused=False, nhwc=False)\n"
        "assert use_nhwc_blocks(f) == 1 and not triton_runs_on('cpu') and not triton_runs_on('cuda')\n"
        "pk = f.block1[0]._pack(torch.float32, torch.device('cpu'))\n"
        "assert pk.bc == 16 and pk.c1p == 16\n"
        "x = torch.rand(1, 3, 6, 7)\n"
        "with torch.no_grad():\n"
        "    assert torch.allclose(f(x), ref(x), atol=1e-6)\n"
        "assert 'triton' not in [k for k, v in sys.modules.items() if v is not None]\n"
        "print('ok')\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
