"""PSNR and SSIM on the Y channel, as in the SR benchmark protocol (MATLAB / BasicSR conventions).

All functions take numpy arrays. RGB images are (H, W, 3) with values in [0, 255] (uint8 or
float); Y images are (H, W) float64 on the [0, 255] scale.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["rgb_to_y", "psnr", "ssim", "crop_border", "gaussian_window"]


def rgb_to_y(rgb: np.ndarray, round_y: bool = False) -> np.ndarray:
    """ITU-R BT.601 luma as MATLAB ``rgb2ycbcr``: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255.

    rgb: (H, W, 3) on [0, 255]. Returns (H, W) float64 in [16, 235]. ``round_y=True`` rounds Y to
    an integer, as MATLAB does for uint8 input; the default keeps it in float (BasicSR convention).
    """
    a = np.asarray(rgb, dtype=np.float64)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects (H, W, 3), got shape {a.shape}")
    y = 16.0 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255.0
    return np.round(y) if round_y else y


def crop_border(img: np.ndarray, border: int) -> np.ndarray:
    """Drop ``border`` pixels from each side of the first two axes (no-op for border <= 0)."""
    if border <= 0:
        return img
    if img.shape[0] <= 2 * border or img.shape[1] <= 2 * border:
        raise ValueError(f"image {img.shape[:2]} too small for a border crop of {border}")
    return img[border:-border, border:-border]


def psnr(a: np.ndarray, b: np.ndarray, max_val: float = 255.0) -> float:
    """PSNR in dB between equal-shape arrays (float64 MSE); inf for identical arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(max_val * max_val / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian (as MATLAB fspecial / cv2.getGaussianKernel), float64 of length ``size``."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of a 2-D float64 image with the outer product g g^T."""
    k = g.size
    h, w = img.shape
    rows = np.zeros((h - k + 1, w), dtype=np.float64)
    for i in range(k):
        rows += g[i] * img[i:i + h - k + 1, :]
    out = np.zeros((h - k + 1, w - k + 1), dtype=np.float64)
    for j in range(k):
        out += g[j] * rows[:, j:j + w - k + 1]
    return out


def ssim(a: np.ndarray, b: np.ndarray, max_val: float = 255.0) -> float:
    """SSIM (Wang et al. 2004) of two single-channel images on [0, max_val].

    Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, 'valid' filtering (no padding), mean
    of the SSIM map: the MATLAB ``ssim_index`` / BasicSR ``calculate_ssim`` definition, in float64.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim expects two equal (H, W) arrays, got {a.shape} and {b.shape}")
    if min(a.shape) < 11:
        raise ValueError(f"ssim needs images of at least 11x11, got {a.shape}")
    c1 = (0.01 * max_val) ** 2
    c2 = (0.03 * max_val) ** 2
    g = gaussian_window(11, 1.5)
    mu1, mu2 = _filter_valid(a, g), _filter_valid(b, g)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _filter_valid(a * a, g) - mu1_sq
    s2 = _filter_valid(b * b, g) - mu2_sq
    s12 = _filter_valid(a * b, g) - mu12
    smap = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return float(smap.mean())
