"""MATLAB-compatible ``imresize`` (bicubic, antialiased on downscale), in float64 numpy.

Follows MATLAB's imresize.m: cubic kernel with a = -0.5, output pixel ``x`` (1-based) maps to
input coordinate ``u = x/scale + 0.5*(1 - 1/scale)``; on downscale (scale < 1, antialias on)
the kernel is stretched by ``1/scale`` (``h(x) = scale * cubic(scale * x)``); each row of weights
is normalised to sum 1; out-of-range taps are mirrored ('symmetric' boundary: the edge pixel
is repeated). The height is resized first, then the width (MATLAB's order for equal scales).

Unlike MATLAB on uint8 images, nothing is rounded between the two passes: the result is float.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["cubic", "contributions", "resize_matrix", "imresize"]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic kernel with a = -0.5 (MATLAB's 'bicubic'), elementwise on float64 ``x``."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


def contributions(in_length: int, out_length: int, scale: float,
                  antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``contributions``: (weights, indices), both (out_length, P) with 0-based indices.

    Weights rows sum to 1; indices are already mirrored into [0, in_length).
    """
    kernel_width = 4.0
    if scale < 1 and antialiasing:
        def h(t):
            return scale * cubic(scale * t)
        kernel_width = kernel_width / scale
    else:
        h = cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    p = int(math.ceil(kernel_width)) + 2
    ind = left[:, None] + np.arange(p, dtype=np.float64)[None, :]      # 1-based
    weights = h(u[:, None] - ind)
    weights = weights / weights.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    indices = aux[np.mod(ind.astype(np.int64) - 1, aux.size)]
    keep = np.any(weights != 0, axis=0)                                   # MATLAB drops all-zero columns
    return weights[:, keep], indices[:, keep]


def resize_matrix(in_length: int, out_length: int, scale: float, antialiasing: bool = True) -> np.ndarray:
    """Dense (out_length, in_length) float64 matrix M with ``out = M @ in`` along one axis."""
    w, idx = contributions(in_length, out_length, scale, antialiasing)
    m = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.repeat(np.arange(out_length), w.shape[1])
    np.add.at(m, (rows, idx.ravel()), w.ravel())
    return m


def imresize(img: np.ndarray, scale: float | None = None, output_shape: tuple[int, int] | None = None,
             antialiasing: bool = True) -> np.ndarray:
    """Resize ``img`` (H, W) or (H, W, C), any real dtype, like MATLAB ``imresize(img, scale, 'bicubic')``.

    Give ``scale`` (output size ``ceil(scale * size)``) or ``output_shape`` (H, W) (then the scale
    per axis is out/in, as in MATLAB). Returns float64, not clipped or rounded.
    """
    a = np.asarray(img, dtype=np.float64)
    if a.ndim not in (2, 3):
        raise ValueError(f"imresize expects an (H, W) or (H, W, C) array, got shape {a.shape}")
    h, w = a.shape[:2]
    if output_shape is not None:
        oh, ow = int(output_shape[0]), int(output_shape[1])
        sh, sw = oh / h, ow / w
    elif scale is not None:
        if scale <= 0:
            raise ValueError(f"imresize scale must be positive, got {scale}")
        sh = sw = float(scale)
        oh, ow = int(math.ceil(scale * h)), int(math.ceil(scale * w))
    else:
        raise ValueError("imresize needs scale or output_shape")
    if oh < 1 or ow < 1:
        raise ValueError(f"imresize output would be empty ({oh}x{ow})")
    mh = resize_matrix(h, oh, sh, antialiasing)
    mw = resize_matrix(w, ow, sw, antialiasing)
    # height first, then width (MATLAB order for equal scales); no rounding in between
    if a.ndim == 2:
        return mh @ a @ mw.T
    out = np.einsum("ih,hwc->iwc", mh, a)
    return np.einsum("jw,iwc->ijc", mw, out)
