"""Tunables of the whole-block NHWC inference kernels (block_molrcm.py, block_sadffm.py), in one place.

Tiles are TH x TW output pixels (TH * TW and TW powers of two); a haloed tile is padded to the next power of
two rows (the GEMM M dimension). Persistent kernels run as many programs per SM as the kernel's occupancy (below), each with its own
scratch slot (the haloed GEMM result, read back shifted by the depthwise taps; L2-resident, reused per tile).
GPU defaults target an H100 with EIMN's C = 64 (not yet tuned on a GPU: no GPU was lent since they were written).
Under TRITON_INTERPRET=1 every program costs Python time per op: the same tiles, and two persistent programs so
that each one runs several tiles (the scratch reuse is exercised).
"""
from __future__ import annotations

import torch

from .molrcm_config import interpreting

# Per kernel and dtype class: (TH, TW, num_warps, CTAs per SM) [+ hidden channels of U per step for the body;
# (pixels per program, num_warps, CTAs per SM) for apply]. The CTAs per SM are the occupancy each kernel is designed
# for: its registers (x threads) and shared memory must fit that many on an sm_90 SM (65536 registers, 227 KiB),
# which tests/test_gpu_static.py checks on the compiled code; the persistent kernels launch that many programs per
# SM. The fp32 tiles are smaller: a 3xTF32 dot holds each operand twice (high and low parts); these are the largest
# tiles that compile for sm_90 without spills.
REGION = {"fp32": (8, 16, 8, 1), "half": (8, 16, 8, 1)}  # haloed tile (TH+4) x (TW+4) = 240 -> 256 rows
REGION_ROWS = 128                                        # rows of the haloed q GEMM per step
MIX = {"fp32": (2, 16, 8, 1), "half": (4, 16, 4, 4)}     # no halo (r is read from memory with its halo)
BODY = {"fp32": (4, 8, 4, 2, 16), "half": (4, 16, 8, 1, 32)}  # haloed (TH+2) x (TW+2): 60 -> 64 / 108 -> 128 rows
APPLY = {"fp32": (64, 4, 4), "half": (128, 4, 3)}
PROGRAMS_INTERP = 2


FP32_DOTS = ("tf32x3", "tf32")  # float32 GEMMs: 3xTF32 (~1e-6 relative) or one TF32 product (~1e-3)


def check_fp32_dot(fp32_dot: str) -> str:
    """``fp32_dot`` if it is one of FP32_DOTS, else ValueError."""
    if fp32_dot not in FP32_DOTS:
        raise ValueError(f"fp32_dot must be one of {FP32_DOTS}, got {fp32_dot!r}")
    return fp32_dot


def dtype_class(dt: torch.dtype) -> str:
    """'fp32' or 'half': the key of the tile tables for activations of dtype ``dt``."""
    return "fp32" if dt in (torch.float32, torch.float64) else "half"


def persistent_programs(device: torch.device, tiles: int, per_sm: int) -> int:
    """Programs of a persistent kernel: ``per_sm`` per SM on a GPU (PROGRAMS_INTERP under the interpreter),
    at most ``tiles``."""
    if interpreting() or device.type != "cuda":
        return max(1, min(tiles, PROGRAMS_INTERP))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(tiles, sms * per_sm))
