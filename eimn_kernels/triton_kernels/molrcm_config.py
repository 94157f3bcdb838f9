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


# 1x1 GEMM kernels (proj_qv, gate_out): pixels per program; channels are one padded block.
BLOCK_P_GPU = 128
BLOCK_P_INTERP = 256
NUM_WARPS_1X1 = 4
NUM_WARPS_1X1_BWD = 8  # backward holds two (C x C) weight-gradient accumulators in registers
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

# fp32 tl.dot precision: 'ieee' keeps the 1e-5 fp32 accuracy bar ('tf32x3' is faster, ~1e-6..1e-5).
FP32_DOT_PRECISION = "ieee"


def block_p() -> int:
    return BLOCK_P_INTERP if interpreting() else BLOCK_P_GPU


def dw_tile() -> tuple[int, int, int, int]:
    """(TILE_H, TILE_W, BLOCK_DC, BLOCK_E) for dw_mix."""
    if interpreting():
        return TILE_H_INTERP, TILE_W_INTERP, BLOCK_DC_INTERP, BLOCK_E_INTERP
    return TILE_H_GPU, TILE_W_GPU, BLOCK_DC_GPU, BLOCK_E_GPU
