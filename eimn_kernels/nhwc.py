"""The NHWC whole-block inference path: one folded EIMN block and the LayerNorm after it in five kernels.

    molrcm_region -> molrcm_mix -> sadffm_body -> dffm_global -> dffm_apply

in CUDA (csrc/cuda/block_*: WMMA GEMMs over shared-memory tiles, EIMN's dim 64 layers, the default where built)
or Triton (triton_kernels/block_*.py: any width; what CPU tensors run under TRITON_INTERPRET=1).

Activations stay NHWC (channels_last) from block to block: the model's head output is converted once, by the first
block, and every block returns a channels_last NCHW-shaped tensor. Every 1x1 convolution is a tensor-core GEMM
(fp16 / bf16 operands, float32 as 3xTF32) with its epilogue in registers; q, U and h never reach HBM.
Used by ``optimize_for_inference`` for models on a CUDA device (``nhwc=True``, the default there); inference only:
with autograd, on a CPU tensor (outside the Triton interpreter) or in float64 the block runs its folded eager /
fused layers instead.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from .modules import apply_channel_norm
from .triton_kernels.block_config import check_fp32_dot

__all__ = ["block_forward", "NHWCEIMNBlock", "use_nhwc_blocks", "FusedAway", "CUDA_WEIGHTS", "CUDA_BLOCK_SMEM",
           "cuda_block_available", "cuda_block_supports", "resolve_backend", "triton_runs_on"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The packed weights (triton_kernels/block_pack.Packed fields) in the order of the CUDA kernels' BlockWeights
# (csrc/cuda/block_kernels.cuh), the LayerNorm after the block's weight and bias last.
CUDA_WEIGHTS = ("wq_t", "wf_t", "wv_t", "wo_t", "win_t", "wout_t", "wlr_t", "bq", "w0", "b0", "w1", "b1", "w2", "b2",
                "bf", "bv", "bo", "b_in", "w_dw", "b_dw", "b_out", "ln_w", "ln_b", "b_lr", "w_sl", "w_gr", "b_gr",
                "w_ce", "b_ce", "w_sg", "b_se", "ls2")


_EIMN_SHAPE = dict(c=64, c1=24, c2=8, k0=5, k1=5, d1=2, k2=7, d2=3, hid=170, rr=16)
_fake_registered = False


def cuda_block_available() -> bool:
    """Whether the compiled extension has the CUDA block kernels (eimn_C::nhwc_block_forward with a CUDA impl)."""
    from . import _ext
    if not _ext.built_with_cuda():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("eimn_C::nhwc_block_forward", "CUDA")


# The largest dynamic shared memory of the CUDA block kernels per block (molrcm_region: the 12x20 haloed x tile,
# Wq and q; csrc/cuda/block_molrcm_kernels.cu region_smem), checked by tests/test_cuda_block_emu.py.
CUDA_BLOCK_SMEM = {torch.float32: 156672, torch.float16: 112896, torch.bfloat16: 112896}


def cuda_block_supports(pk) -> bool:
    """Whether the CUDA block kernels take this packed block: EIMN's dim 64 layers (compile-time shapes)."""
    return all(getattr(pk, k) == v for k, v in _EIMN_SHAPE.items())


def _cuda_smem_ok(x: torch.Tensor) -> bool:
    """Whether x's GPU lets a block use the CUDA block kernels' shared memory (H100 / A100 yes; GPUs with ~100 KiB
    per block, such as sm_86 / sm_89, no: they run the Triton kernels)."""
    props = torch.cuda.get_device_properties(x.device)
    optin = getattr(props, "shared_memory_per_block_optin", props.shared_memory_per_block)
    return optin >= CUDA_BLOCK_SMEM.get(x.dtype, 1 << 30)


def _register_fake() -> None:
    global _fake_registered
    if not _fake_registered:
        torch.library.register_fake("eimn_C::nhwc_block_forward")(
            lambda x, w, eps, norm_eps, tf32x3: torch.empty_like(x))
        _fake_registered = True


def resolve_backend(backend: str, x: torch.Tensor, pk) -> str:
    """'cuda' or 'triton' for ``backend`` in auto / cuda / triton: auto takes the CUDA kernels where the extension
    has them, the block is EIMN's dim 64 one and the GPU has their shared memory, else Triton."""
    if backend not in ("auto", "cuda", "triton"):
        raise ValueError(f"NHWC block backend must be auto, cuda or triton, got {backend!r}")
    if backend == "triton":
        return "triton"
    ok = x.is_cuda and cuda_block_available() and cuda_block_supports(pk) and _cuda_smem_ok(x)
    if backend == "cuda" and not ok:
        why = ("x is not a CUDA tensor" if not x.is_cuda else "the extension has no CUDA block kernels"
               if not cuda_block_available() else "the CUDA block kernels take EIMN's dim 64 layers only"
               if not cuda_block_supports(pk) else
               f"this GPU gives a block less than the {CUDA_BLOCK_SMEM.get(x.dtype)} bytes of shared memory they need")
        raise ValueError(f"NHWC block backend 'cuda': {why} (use 'triton' or 'auto')")
    return "cuda" if ok else "triton"


def block_forward(x: torch.Tensor, pk, norm: tuple | None = None, backend: str = "auto") -> torch.Tensor:
    """One folded EIMN block (and, with ``norm`` = (weight, bias, eps) float32, the LayerNorm after it).
    x: [N, H, W, C] NHWC contiguous float32 / float16 / bfloat16 -> the same shape and dtype. ``backend``: the CUDA
    kernels (csrc/cuda/block_*), the Triton ones (triton_kernels/block_*) or auto (see resolve_backend)."""
    if x.dim() != 4 or x.shape[3] != pk.c or not x.is_contiguous():
        raise ValueError(f"block_forward: x must be NHWC contiguous [N, H, W, {pk.c}], got {tuple(x.shape)} "
                         f"strides {x.stride()}")
    N, H, W, _ = x.shape
    if x.numel() == 0:
        return torch.empty_like(x)
    if resolve_backend(backend, x, pk) == "cuda":
        _register_fake()
        ws = [getattr(pk, k) for k in CUDA_WEIGHTS]
        empty = x.new_empty(0, dtype=torch.float32)
        ws += [norm[0], norm[1]] if norm is not None else [empty, empty]
        return torch.ops.eimn_C.nhwc_block_forward(x, ws, pk.eps, norm[2] if norm is not None else 0.0,
                                                   pk.fp32_dot == "tf32x3")
    from .triton_kernels.block_molrcm import molrcm_mix, molrcm_region
    from .triton_kernels.block_sadffm import dffm_apply, dffm_global, sadffm_body
    a = molrcm_mix(molrcm_region(x, pk), x, pk)
    y, aloc, part, tpi = sadffm_body(a, pk)
    cg, kk = dffm_global(part, tpi, N, H * W, pk)
    return dffm_apply(a, y, aloc, cg, kk, pk, norm)


@functools.lru_cache(maxsize=None)
def triton_runs_on(device_type: str) -> bool:
    """Whether the Triton block kernels run on tensors of ``device_type`` here (backends.triton.available: Triton
    installed; CUDA, or CPU under TRITON_INTERPRET=1). Cached: a failed ``import triton`` is not retried per call."""
    from .backends import triton as triton_backend
    return triton_backend.available(torch.device(device_type))[0]


class FusedAway(nn.Module):
    """Stands where a LayerNorm was fused into the block before it: returns its input (channels-first, so
    eimn.model.EIMN calls it without permutes)."""

    channels_first = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class NHWCEIMNBlock(nn.Module):
    """A folded EIMN block and the LayerNorm after it (``norm``: nn.LayerNorm(C) or fused ChannelLayerNorm, or
    None) on the NHWC block kernels. x: (N, C, H, W) -> (N, C, H, W) in channels_last memory format.

    Runs the kernels on CUDA tensors (and CPU tensors under TRITON_INTERPRET=1) of float32 / float16 / bfloat16
    without autograd; under autocast in the autocast dtype. Otherwise it runs ``block`` and ``norm`` as they are.
    ``backend``: the CUDA block kernels, the Triton ones, or auto (CUDA where they take the block, else Triton).
    ``fp32_dot``: the float32 GEMMs as 3xTF32 ('tf32x3', ~1e-6 relative) or one TF32 product ('tf32', ~1e-3, as
    eager's cuDNN by default)."""

    def __init__(self, block: nn.Module, norm: nn.Module | None = None, backend: str = "auto",
                 fp32_dot: str = "tf32x3"):
        super().__init__()
        if backend not in ("auto", "cuda", "triton"):
            raise ValueError(f"NHWCEIMNBlock: backend must be auto, cuda or triton, got {backend!r}")
        self.block, self.norm, self.backend, self.fp32_dot = block, norm, backend, check_fp32_dot(fp32_dot)
        self._packs: dict = {}

    def _param_list(self) -> list:
        """The parameters, listed on first use (walking the module tree on every call cost tens of microseconds a
        block). load_state_dict and in-place updates keep the same objects and bump their versions (a repack);
        a module whose parameters are replaced by new objects must be wrapped again."""
        params = self.__dict__.get("_params")
        if params is None:
            params = self.__dict__["_params"] = list(self.parameters())
        return params

    def _pack(self, dtype: torch.dtype, device: torch.device):
        from .triton_kernels.block_pack import pack_block
        key = (dtype, device, self.fp32_dot, tuple(p._version for p in self._param_list()))
        if key[:2] not in self._packs or self._packs[key[:2]][0] != key:
            self._packs[key[:2]] = (key, pack_block(self.block.attn, self.block.mlp, self.block.layer_scale_2,
                                                    dtype, device, self.fp32_dot))
        return self._packs[key[:2]][1]

    def _fallback(self, x: torch.Tensor) -> torch.Tensor:
        return apply_channel_norm(self.norm, self.block(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        if x.is_cuda and torch.is_autocast_enabled("cuda"):
            dt = torch.get_autocast_dtype("cuda")
        fast = ((x.is_cuda or triton_runs_on(x.device.type)) and dt in _DTYPES and x.dim() == 4
                and not (torch.is_grad_enabled() and (x.requires_grad
                                                      or any(p.requires_grad for p in self._param_list()))))
        if not fast:
            return self._fallback(x)
        pk = self._pack(dt, x.device)
        backend = resolve_backend(self.backend, x, pk)
        if backend == "triton" and not triton_runs_on(x.device.type):
            return self._fallback(x)  # a CUDA build without Triton, on a block its CUDA kernels do not take
        xn = x.to(dt).permute(0, 2, 3, 1)
        if not xn.is_contiguous():
            xn = xn.contiguous()
        norm = None
        if self.norm is not None:
            norm = (self.norm.weight.detach().float().contiguous(), self.norm.bias.detach().float().contiguous(),
                    float(self.norm.eps))
        out = block_forward(xn, pk, norm, backend)
        return out.permute(0, 3, 1, 2)


def use_nhwc_blocks(model: nn.Module, backend: str = "auto", fp32_dot: str = "tf32x3") -> int:
    """Swap every folded block of an EIMN ``model`` (and the LayerNorm after it) for an NHWCEIMNBlock on ``backend``
    (auto, cuda, triton) with float32 GEMMs in ``fp32_dot`` precision, in place. Blocks the kernels cannot run
    (block_pack.unsupported) are left as they are. Returns the number swapped."""
    from .inference import FoldedEIMNBlock
    from .triton_kernels.block_pack import unsupported
    n = 0
    names = model.channel_norm_names() if hasattr(model, "channel_norm_names") else []
    for i, norm_name in enumerate(names, start=1):
        holder = getattr(model, f"block{i}", None)
        if not isinstance(holder, nn.Sequential) or len(holder) != 1 or not isinstance(holder[0], FoldedEIMNBlock):
            continue
        blk = holder[0]
        if unsupported(blk.attn, blk.mlp) is not None:
            continue
        holder[0] = NHWCEIMNBlock(blk, getattr(model, norm_name), backend, fp32_dot)
        setattr(model, norm_name, FusedAway())
        n += 1
    return n
