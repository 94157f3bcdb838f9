"""CPU emulation of the CUDA NHWC block kernels (csrc/cuda/block_*_kernels.cu) against the folded eager block.

No GPU needed: tests/emu/block_emu.cpp compiles the two .cu files with g++ over tests/emu/cuda_emu.h (a thread
block = 256 real threads with barriers and warp shuffles) and tests/emu/wmma_emu.h (the WMMA calls as whole-tile
products; TF32 rounding as the hardware's cvt.rna), so the tiling, halos, shared-memory layouts, the 3xTF32 GEMMs
and every epilogue run as written. float32 only (the half types need the CUDA headers; their kernels are the same
templates, checked for tensor-core instructions by tests/test_gpu_static.py). Tolerance: 1e-5 relative to max |ref|.
Set EIMN_EMU_ASAN=1 for an AddressSanitizer build (see tests/test_cuda_molrcm_emu.py).
"""
import ctypes
import shutil

import pytest
import torch

from _emu_build import REPO, build_emu
from _perturbed import perturbed_eimn
from eimn_kernels import optimize_for_inference
from eimn_kernels.nhwc import CUDA_BLOCK_SMEM, CUDA_WEIGHTS
from eimn_kernels.triton_kernels.block_pack import pack_block

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to build the CPU emulation")


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    lib = build_emu(REPO / "tests" / "emu" / "block_emu.cpp", tmp_path_factory.mktemp("emu") / "block_emu.so", "-O2")
    lib.emu_block_forward.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 3 + [ctypes.c_float] * 2 + \
        [ctypes.c_int] + [ctypes.c_void_p] * 2
    lib.emu_set_smem_limit(227 * 1024)
    return lib


def _folded(seed: int):
    """A one-block EIMN at EIMN's width, perturbed, folded (eager layers)."""
    return optimize_for_inference(perturbed_eimn(64, 1, seed), fused=False, nhwc=False)


def _run(emu, f, x, norm: bool, tf32x3: bool = True):
    blk = f.block1[0]
    pk = pack_block(blk.attn, blk.mlp, blk.layer_scale_2, torch.float32, torch.device("cpu"))
    ts = [getattr(pk, k).contiguous() for k in CUDA_WEIGHTS]
    ts += [f.norm1.weight.detach().float(), f.norm1.bias.detach().float()] if norm else [torch.empty(0)] * 2
    ptrs = (ctypes.c_void_p * len(ts))(*[t.data_ptr() if t.numel() else 0 for t in ts])
    numel = (ctypes.c_int64 * len(ts))(*[t.numel() for t in ts])
    xn = x.permute(0, 2, 3, 1).contiguous()
    out = torch.empty_like(xn)
    N, H, W, C = xn.shape
    inter = torch.empty(3 * xn.numel() + N * H * W)
    rc = emu.emu_block_forward(N, H, W, xn.data_ptr(), ptrs, numel, pk.eps, float(f.norm1.eps), int(tf32x3),
                               out.data_ptr(), inter.data_ptr())
    assert rc == 0
    return out.permute(0, 3, 1, 2), inter


def _stages(blk, x):
    """The reference of every stage the kernels write: r, a, y, a_loc, and the block's output before the norm."""
    at, mlp = blk.attn, blk.mlp
    r = at.region(at.proj_query(x))
    a = x + at(x)
    t = mlp.SAL(mlp.linear_in(a))
    x1, x2 = t.chunk(2, dim=1)
    y = mlp.linear_out(torch.nn.functional.gelu(x1) * x2)
    d = mlp.DFFM
    z = d.norm(y)
    rr = d.local_reduce.weight.shape[0]
    loc = torch.nn.functional.gelu(d.local_reduce(z))
    a_loc = (loc * d.spatial_expand.weight[0, :rr, 0, 0][None, :, None, None]).sum(1)
    return r, a, y, a_loc, torch.addcmul(a, blk.layer_scale_2[:, None, None], mlp(a))


def _check(name, got, want, rel=1e-5):
    err, scale = (got - want).abs().max().item(), want.abs().max().item()
    assert err <= rel * scale, f"{name}: max |diff| {err:.3g}, max |ref| {scale:.3g}"


@torch.no_grad()
@pytest.mark.parametrize("shape,norm", [((1, 9, 19), True), ((2, 5, 17), False)],
                         ids=["partial-tiles+norm", "batch2"])
def test_block_emu_matches_folded_block(emu, shape, norm):
    """Each stage against its reference, relative to its own magnitude (the block's residual stream is much larger
    than either layer's contribution, which a check of the output alone would hide)."""
    N, H, W = shape
    f = _folded(seed=H)
    x = torch.randn(N, 64, H, W)
    out, inter = _run(emu, f, x, norm)
    blk = f.block1[0]
    r, a, y, a_loc, pre = _stages(blk, x)
    assert torch.isfinite(inter).all(), "a workspace value was read before it was written"
    n = x.numel()
    nchw = lambda t: t.view(N, H, W, 64).permute(0, 3, 1, 2)  # noqa: E731
    _check("r (molrcm_region)", nchw(inter[:n]), r)
    _check("a - x (molrcm_mix)", nchw(inter[n:2 * n]) - x, a - x)
    _check("y (sadffm_body)", nchw(inter[2 * n:3 * n]), y)
    _check("a_loc (sadffm_body epilogue)", inter[3 * n:].view(N, H, W), a_loc)
    if norm:
        _check("out (dffm_apply + LayerNorm)", out, f.norm1(pre.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    else:
        _check("out - a (dffm_apply)", out - a, pre - a)
    # the shared memory the Python side checks a GPU for (eimn_kernels.nhwc.CUDA_BLOCK_SMEM, float32)
    assert emu.emu_max_smem_used() == CUDA_BLOCK_SMEM[torch.float32] <= 227 * 1024


@torch.no_grad()
def test_block_emu_plain_tf32_opt_in(emu):
    """fp32_dot='tf32' (one TF32 product per GEMM, eager cuDNN's default): ~1e-4 relative instead of ~1e-7, so the
    switch reaches the kernels, and it stays within TF32's accuracy."""
    f = _folded(seed=3)
    x = torch.randn(1, 64, 6, 18)
    blk = f.block1[0]
    r, a, _, _, _ = _stages(blk, x)
    _, inter = _run(emu, f, x, False, tf32x3=False)
    n = x.numel()
    got = inter[:n].view(1, 6, 18, 64).permute(0, 3, 1, 2)
    err = (got - r).abs().max().item() / r.abs().max().item()
    assert 1e-5 < err < 3e-3, err
