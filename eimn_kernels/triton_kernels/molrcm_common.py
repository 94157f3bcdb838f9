"""Shared pieces of the MOLRCM Triton kernels: exact activations and their derivatives,
dtype mapping, and the deterministic (fixed-order) reduction of per-program partial sums."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import molrcm_config as cfg
from .molrcm_config import pow2_block  # noqa: F401  (re-exported: the kernels' launchers import it from here)

_SQRT1_2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


@triton.jit
def gelu(z):
    """Exact (erf) GELU of a float32/float64 tensor."""
    return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))


@triton.jit
def gelu_grad(z):
    """d GELU / dz = Phi(z) + z * phi(z)."""
    return 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476)) + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)


@triton.jit
def sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _reduce_rows_kernel(part_ptr, out_ptr, R, M, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """out[m] = sum_{r=0..R-1} part[r, m], summed in row order (deterministic), cast to out dtype."""
    pid = tl.program_id(0)
    cols = pid * BLOCK + tl.arange(0, BLOCK)
    mask = cols < M
    acc = tl.zeros([BLOCK], dtype=ACC)
    for r in range(R):
        acc += tl.load(part_ptr + r * M + cols, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)


def acc_dtype(dt: torch.dtype):
    """Triton accumulation dtype for a torch input dtype (fp64 stays fp64, the rest fp32)."""
    return tl.float64 if dt == torch.float64 else tl.float32


def acc_torch_dtype(dt: torch.dtype) -> torch.dtype:
    return torch.float64 if dt == torch.float64 else torch.float32


def dot_precision(dt: torch.dtype) -> str:
    """tl.dot input_precision: exact ('ieee') for fp64, configurable for fp32 (irrelevant for halves)."""
    if dt == torch.float64:
        return "ieee"
    return cfg.FP32_DOT_PRECISION


def reduce_rows(part: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Sum a (R, M) partial buffer over R in fixed order -> (M,) tensor of ``out_dtype``."""
    R, M = part.shape
    out = torch.empty(M, dtype=out_dtype, device=part.device)
    if M == 0:
        return out
    if R == 0:
        return out.zero_()
    grid = (triton.cdiv(M, cfg.BLOCK_RED),)
    _reduce_rows_kernel[grid](part, out, R, M, ACC=acc_dtype(part.dtype), BLOCK=cfg.BLOCK_RED)
    return out
