"""Shared pieces of the whole-block NHWC inference kernels: tile coordinates, haloed tiles, the dot dtype.

Layout: activations NHWC contiguous (a channels_last NCHW tensor's memory), a pixel's C channels contiguous, so
every activation access of a tile is [pixels, channels] with 16-byte vectors along the channels. Tiles are
TH x TW output pixels of one image; tile t of NTILES = N * TILES_H * TILES_W is image t // TPI, row-major inside.
A haloed tile ("halo rows") is (TH + 2 HALO) x (TW + 2 HALO) pixels flattened row-major and padded to HP rows.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .block_config import check_fp32_dot

_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def tl_dtype(dt: torch.dtype):
    """The Triton dtype of torch dtype ``dt`` (float32, float16, bfloat16); TypeError for any other."""
    if dt not in _TL:
        raise TypeError(f"the NHWC block kernels take float32, float16 or bfloat16, got {dt}")
    return _TL[dt]


def dot_config(dt: torch.dtype, fp32_dot: str = "tf32x3"):
    """(DOT operand dtype, input_precision) for activations of dtype ``dt``: fp16 / bf16 MMA with fp32
    accumulation, fp32 as ``fp32_dot``: 'tf32x3' (3xTF32 on tensor cores, ~1e-6 relative, the default) or 'tf32'
    (one TF32 product, ~1e-3, what eager's cuDNN convolutions do by default).
    The Triton interpreter multiplies bf16 dot operands wrongly (raw bits), so there bf16 is widened to fp32."""
    if dt == torch.float32:
        return tl.float32, check_fp32_dot(fp32_dot)
    if dt == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
        return tl.float32, "ieee"
    return tl_dtype(dt), "ieee"


@triton.jit
def tile_origin(t, TPI, TILES_W, TH: tl.constexpr, TW: tl.constexpr):
    """(n, h0, w0) of tile t: image n, top-left output pixel (h0, w0)."""
    n = t // TPI
    r = t % TPI
    return n, (r // TILES_W) * TH, (r % TILES_W) * TW


@triton.jit
def tile_pixels(n, h0, w0, H, W, TH: tl.constexpr, TW: tl.constexpr):
    """The tile's TH*TW output pixels: (local row oy, local col ox, in-image mask, NHWC pixel index (int64))."""
    o = tl.arange(0, TH * TW)
    oy = o // TW
    ox = o % TW
    py = h0 + oy
    px = w0 + ox
    valid = (py < H) & (px < W)
    return oy, ox, valid, (n * H + py.to(tl.int64)) * W + px


@triton.jit
def halo_pixels(n, h0, w0, H, W, HALO: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, HP: tl.constexpr,
                m0: tl.constexpr, HM: tl.constexpr):
    """Rows m0 .. m0+HM of the haloed tile's HP rows: (row index, in-image mask (False on padding rows), NHWC
    pixel index)."""
    hr = m0 + tl.arange(0, HM)
    hw = TW + 2 * HALO
    hy = h0 - HALO + hr // hw
    hx = w0 - HALO + hr % hw
    valid = (hr < (TH + 2 * HALO) * hw) & (hy >= 0) & (hy < H) & (hx >= 0) & (hx < W)
    return hr, valid, (n * H + hy.to(tl.int64)) * W + hx


@triton.jit
def load_rows(ptr, rows, valid, cols, ncols, stride):
    """[rows, cols] tile of a row-major matrix (row stride ``stride``), zero outside valid rows / cols < ncols."""
    return tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=valid[:, None] & (cols < ncols)[None, :],
                   other=0.0)


def halo_rows(th: int, tw: int, halo: int) -> int:
    """HP: rows of a haloed tile, padded to a power of two."""
    return triton.next_power_of_2((th + 2 * halo) * (tw + 2 * halo))
