"""Tunables of the whole-block NHWC inference kernels (block_molrcm.py, block_sadffm.py), in one place.

Tiles are TH x TW output pixels (TH * TW and TW powers of two); a haloed tile is padded to the next power of
two rows (the GEMM M dimension). Persistent kernels run ``PROGRAMS_PER_SM`` programs per SM, each with its own
scratch slot (the haloed GEMM result, read back shifted by the depthwise taps; L2-resident, reused per tile).
GPU defaults target an H100 with EIMN's C = 64 (not yet tuned on a GPU: no GPU was lent since they were written).
Under TRITON_INTERPRET=1 every program costs Python time per op: the same tiles, and two persistent programs so
that each one runs several tiles (the scratch reuse is exercised).
"""
from __future__ import annotations

import torch

from .molrcm_config import interpreting

# (TH, TW, num_warps) per kernel and dtype class. The fp32 tiles are smaller: a 3xTF32 dot holds each operand
# twice (high and low parts); these are the largest tiles that compile for sm_90 without spills
# (benchmarks/gpu_static.py, tests/test_gpu_static.py)
REGION = {"fp32": (8, 16, 8), "half": (8, 16, 8)}    # haloed tile (TH+4) x (TW+4) = 240 -> 256 rows
REGION_ROWS = 128                                    # rows of the haloed q GEMM per step
MIX = {"fp32": (2, 16, 8), "half": (8, 16, 8)}       # no halo (r is read from memory with its halo)
# (TH, TW, num_warps, hidden channels of U per step, x1's and x2's each); haloed tile (TH+2) x (TW+2): 60 -> 64 rows
# in fp32, 108 -> 128 in the half types
BODY = {"fp32": (4, 8, 4, 16), "half": (4, 16, 8, 32)}
APPLY = {"fp32": (64, 4), "half": (128, 4)}          # (pixels per program, num_warps)
PROGRAMS_PER_SM = 2
PROGRAMS_INTERP = 2


def dtype_class(dt: torch.dtype) -> str:
    return "fp32" if dt in (torch.float32, torch.float64) else "half"


def persistent_programs(device: torch.device, tiles: int) -> int:
    """Programs of a persistent kernel: PROGRAMS_PER_SM per SM on a GPU (2 under the interpreter), <= tiles."""
    if interpreting() or device.type != "cuda":
        return max(1, min(tiles, PROGRAMS_INTERP))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(tiles, sms * PROGRAMS_PER_SM))
