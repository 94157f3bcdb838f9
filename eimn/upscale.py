"""Running a model on whole images or on overlapping tiles blended without seams.

Tiling is an approximation for EIMN: DFFM uses a mean over the whole image and the receptive
field of 16 blocks is large, so a tile sees different statistics than the full image. With the
default overlap the difference is small (see ``tile_error`` and the test suite for numbers).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

__all__ = ["tile_starts", "tile_weights", "upscale_tiled", "upscale_image", "is_oom", "tile_error"]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering [0, length), neighbours overlapping by
    at least ``overlap``, spread evenly; the last tile ends exactly at ``length``."""
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    n = math.ceil((length - overlap) / (tile - overlap))
    n = max(n, 2)
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _ramp(start: int, end: int, length: int, ramp: int, device, dtype) -> torch.Tensor:
    """1-D weights over [start, end): linear ramps of width ``ramp`` on sides inside the image."""
    x = torch.arange(start, end, device=device, dtype=dtype) + 0.5
    w = torch.ones(end - start, device=device, dtype=dtype)
    if ramp > 0 and start > 0:
        w = torch.minimum(w, (x - start) / ramp)
    if ramp > 0 and end < length:
        w = torch.minimum(w, (end - x) / ramp)
    return w


def tile_weights(y0: int, y1: int, x0: int, x1: int, h: int, w: int, ramp: int,
                 device=None, dtype=torch.float32) -> torch.Tensor:
    """(y1-y0, x1-x0) blending weights of a tile in an (h, w) output (separable feathering)."""
    return (_ramp(y0, y1, h, ramp, device, dtype)[:, None] * _ramp(x0, x1, w, ramp, device, dtype)[None, :])


def _tiles(h: int, w: int, tile: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    for y in tile_starts(h, tile, overlap):
        for x in tile_starts(w, tile, overlap):
            yield y, min(y + tile, h), x, min(x + tile, w)


@torch.no_grad()
def upscale_tiled(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int,
                  tile: int, overlap: int = 32, progress: Callable[[int], None] | None = None
                  ) -> torch.Tensor:
    """Run ``model`` on overlapping ``tile``x``tile`` LR tiles of ``x`` (N, C, h, w) and blend.

    Overlaps are blended with linear ramps as wide as ``overlap`` (in output pixels ``overlap *
    scale``), so each tile's borders, where zero padding replaces real context, get little
    weight. Accumulates in float32 on ``x``'s device; returns (N, C', scale*h, scale*w) in
    float32. ``progress(n)`` is called after each tile with n=1.
    """
    n, _, h, w = x.shape
    if tile <= 0 or (tile >= h and tile >= w):
        out = model(x).float()
        if progress:
            progress(1)
        return out
    overlap = min(overlap, tile - 1)
    out = acc = None
    for y0, y1, x0, x1 in _tiles(h, w, tile, overlap):
        sr = model(x[:, :, y0:y1, x0:x1]).float()
        if out is None:
            out = torch.zeros(n, sr.shape[1], h * scale, w * scale, device=sr.device, dtype=torch.float32)
            acc = torch.zeros(1, 1, h * scale, w * scale, device=sr.device, dtype=torch.float32)
        wt = tile_weights(y0 * scale, y1 * scale, x0 * scale, x1 * scale, h * scale, w * scale,
                          overlap * scale, device=sr.device)
        out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] += sr * wt
        acc[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] += wt
        if progress:
            progress(1)
    return out / acc


def num_tiles(h: int, w: int, tile: int, overlap: int) -> int:
    """How many tiles ``upscale_tiled`` runs for an (h, w) input."""
    if tile <= 0 or (tile >= h and tile >= w):
        return 1
    overlap = min(overlap, tile - 1)
    return len(tile_starts(h, tile, overlap)) * len(tile_starts(w, tile, overlap))


def is_oom(e: BaseException) -> bool:
    """True for a CUDA or CPU out-of-memory error."""
    if isinstance(e, getattr(torch, "OutOfMemoryError", ())):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg
                                            or "not enough memory" in msg)


def upscale_image(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int,
                  tile: int = 0, overlap: int = 32, min_tile: int = 48,
                  progress: Callable[[int], None] | None = None,
                  on_retry: Callable[[int], None] | None = None) -> torch.Tensor:
    """Upscale (N, C, h, w) ``x``; whole image when tile <= 0, else tiles. On out-of-memory,
    retries with tiles half as large (starting at 512), down to ``min_tile``; ``on_retry(tile)``
    is told each new size. Returns float32 (N, C, scale*h, scale*w), not clamped."""
    size = tile
    while True:
        try:
            return upscale_tiled(model, x, scale, size, overlap, progress)
        except Exception as e:  # noqa: BLE001 - only OOM is retried
            if not is_oom(e):
                raise
            if x.is_cuda:
                torch.cuda.empty_cache()
            cur = size if size > 0 else max(x.shape[-2:])
            size = min(512, cur // 2) if cur > 512 else cur // 2
            if size < min_tile:
                raise
            if on_retry:
                on_retry(size)


def tile_error(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int,
               tile: int, overlap: int) -> dict:
    """How far tiled output is from whole-image output on ``x`` (N, 3, h, w) in [0, 1]:
    max |diff| and PSNR (dB, 8-bit scale) of the clamped, uint8-rounded RGB outputs."""
    whole = upscale_tiled(model, x, scale, 0).clamp(0, 1)
    tiled = upscale_tiled(model, x, scale, tile, overlap).clamp(0, 1)
    wq, tq = (whole * 255).round(), (tiled * 255).round()
    mse = float(((wq - tq) ** 2).mean())
    return {"max_abs_float": float((whole - tiled).abs().max()),
            "max_abs_uint8": int((wq - tq).abs().max()),
            "psnr_db": float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse),
            "tiles": num_tiles(x.shape[-2], x.shape[-1], tile, overlap)}
