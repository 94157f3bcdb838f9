"""Tunables of the MOLRCM Triton kernels (one place; block sizes are tl.constexpr in the kernels).

GPU defaults target an H100 (EIMN: C = 64, split 24/8/32, K = 5/5/7, dilations 1/2/3).
Under TRITON_INTERPRET=1 every program costs ~50 ms of Python, so the interpreter uses
few, large blocks instead.
"""
from __future__ import annotations

import os


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# 1x1 GEMM kernels (proj_qv, gate_out): (BLOCK_P pixels per program, num_warps) on GPU per input
# dtype; channels are one padded block. Half types use tensor cores; fp32 ('ieee') and fp64 dots
# are FMA loops that need far more registers and shared memory (ptxas, sm_90, C = 64: fp32 backward
# at BLOCK_P = 128 needs 280 KB of shared memory (> 227 KB: would not launch); at 32: 112 KB).
GEMM_FWD_GPU = {"half": (128, 4), "fp32": (64, 8), "fp64": (32, 8)}
GEMM_BWD_GPU = {"half": (64, 8), "fp32": (32, 4), "fp64": (16, 4)}
BLOCK_P_INTERP = 256
# 1x1 backward: each program sums the weight-gradient partials of several pixel tiles of one image
# in registers (one partial row per program): about PROGRAMS_PER_SM_1X1 programs per SM in total.
PROGRAMS_PER_SM_1X1 = 4
TILES_PER_PROG_INTERP = 2

# dw_mix: output tile TILE_H x TILE_W pixels (powers of 2) times BLOCK_DC channels per work item;
# the extended (tile + halo) region of r is computed in chunks of BLOCK_E pixels.
TILE_H_GPU, TILE_W_GPU, BLOCK_DC_GPU, BLOCK_E_GPU = 16, 32, 4, 512
TILE_H_INTERP, TILE_W_INTERP, BLOCK_DC_INTERP, BLOCK_E_INTERP = 16, 16, 16, 2048
NUM_WARPS_DW = 4
# Persistent dw_mix forward: at most this many programs per SM (each owns one r scratch slot).
PROGRAMS_PER_SM = 8

# Fixed-order reduction of per-program weight-gradient partials: columns per program.
BLOCK_RED = 256

# fp32 tl.dot precision. 'tf32x3' (three tf32 tensor-core products, error ~1e-6) keeps the 1e-5 fp32 bar and
# on an H100 ran the MOLRCM 1x1 kernels' forward+backward 3-5x faster than 'ieee' (FMA loops), 2026-11-25
# (benchmarks/results/nvidia-h100-80gb-hbm3-20261125-1646-dot-precision.json); 'tf32' alone misses the bar (~1e-3).
FP32_DOT_PRECISION = "tf32x3"


def pow2_block(n: int, minimum: int = 16) -> int:
    """Padded block size (power of two, >= minimum: tl.dot needs dims >= 16) holding n. Plain Python (no Triton
    import), so that code packing weights for the kernels loads where Triton is missing."""
    return max(minimum, 1 << (max(int(n), 1) - 1).bit_length())


def gemm_config(dtype, backward: bool) -> tuple[int, int]:
    """(BLOCK_P, num_warps) of a 1x1 GEMM kernel for torch dtype ``dtype``."""
    if interpreting():
        return BLOCK_P_INTERP, 4
    key = {"torch.float32": "fp32", "torch.float64": "fp64"}.get(str(dtype), "half")
    return (GEMM_BWD_GPU if backward else GEMM_FWD_GPU)[key]


def dw_tile() -> tuple[int, int, int, int]:
    """(TILE_H, TILE_W, BLOCK_DC, BLOCK_E) for dw_mix."""
    if interpreting():
        return TILE_H_INTERP, TILE_W_INTERP, BLOCK_DC_INTERP, BLOCK_E_INTERP
    return TILE_H_GPU, TILE_W_GPU, BLOCK_DC_GPU, BLOCK_E_GPU
