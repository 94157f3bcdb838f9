"""eimn.metrics (Y conversion, PSNR, SSIM) and the evaluation protocol helpers."""
import math

import numpy as np
import pytest
import torch

from eimn.evaluate import make_lr, mod_crop, parse_authors_file
from eimn.imresize import imresize
from eimn.metrics import crop_border, gaussian_window, psnr, rgb_to_y, ssim


def test_rgb_to_y_matlab_coefficients():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]],
                   dtype=np.uint8)
    y = rgb_to_y(rgb)
    want = [16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966,
            16 + (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255]
    np.testing.assert_allclose(y[0], want, atol=1e-12)
    np.testing.assert_array_equal(rgb_to_y(rgb, round_y=True)[0, :2], [16, 235])


def test_psnr_known_values():
    a = np.zeros((8, 8))
    assert psnr(a, a + 1) == pytest.approx(10 * math.log10(255 ** 2), abs=1e-12)   # 48.1308 dB
    assert psnr(a, a + 16) == pytest.approx(20 * math.log10(255 / 16), abs=1e-12)
    assert psnr(a, a) == float("inf")
    with pytest.raises(ValueError):
        psnr(a, np.zeros((8, 9)))


def _ssim_independent(a, b):
    """Direct (non-separable) 11x11 Gaussian SSIM with torch conv2d in float64."""
    g = torch.from_numpy(gaussian_window(11, 1.5))
    w = (g[:, None] * g[None, :])[None, None]
    A, B = (torch.from_numpy(np.asarray(t, np.float64))[None, None] for t in (a, b))
    f = lambda t: torch.nn.functional.conv2d(t, w)  # noqa: E731  ('valid')
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m1, m2 = f(A), f(B)
    s1, s2, s12 = f(A * A) - m1 ** 2, f(B * B) - m2 ** 2, f(A * B) - m1 * m2
    return float((((2 * m1 * m2 + c1) * (2 * s12 + c2)) / ((m1 ** 2 + m2 ** 2 + c1) * (s1 + s2 + c2))).mean())


def test_gaussian_window():
    g = gaussian_window(11, 1.5)
    assert g.sum() == pytest.approx(1.0, abs=1e-15)
    assert g[5] / g[4] == pytest.approx(math.exp(1 / (2 * 1.5 ** 2)), rel=1e-14)


def test_ssim_matches_direct_2d_filtering_and_constants():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (40, 33)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).round()
    assert ssim(a, b) == pytest.approx(_ssim_independent(a, b), abs=1e-12)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    # constant images: sigma = 0, so SSIM = (2 c d + C1) / (c^2 + d^2 + C1)
    c, d, C1 = 100.0, 110.0, (0.01 * 255) ** 2
    assert ssim(np.full((20, 20), c), np.full((20, 20), d)) == pytest.approx(
        (2 * c * d + C1) / (c * c + d * d + C1), abs=1e-12)
    with pytest.raises(ValueError):
        ssim(np.zeros((10, 10)), np.zeros((10, 10)))


def test_crop_and_mod_crop():
    img = np.arange(30 * 40).reshape(30, 40)
    assert crop_border(img, 3).shape == (24, 34)
    assert crop_border(img, 3)[0, 0] == img[3, 3]
    assert mod_crop(img, 12).shape == (24, 36)
    assert mod_crop(np.zeros((512, 512, 3)), 12).shape == (504, 504, 3)


def test_make_lr_is_float_matlab_bicubic_then_rounded():
    rng = np.random.default_rng(2)
    hr = rng.integers(0, 256, (24, 36, 3)).astype(np.uint8)
    for s in (2, 3, 4):
        lr = make_lr(hr, s)
        assert lr.dtype == np.uint8 and lr.shape == (24 // s, 36 // s, 3)
        want = np.round(np.clip(imresize(hr / 255.0, scale=1 / s), 0, 1) * 255)
        np.testing.assert_array_equal(lr, want)
    with pytest.raises(ValueError):
        make_lr(hr[:23], 2)


def test_parse_authors_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("EIMN_L:\nScale:2 Dataset:Set5 Avg_psnr:38.25 Avg_ssim:0.9619\n\n"
                 "EIMN_A:\nScale:4 Dataset:Set14 Avg_psnr:28.89 Avg_ssim:0.7881\n")
    t = parse_authors_file(str(p))
    assert t == {("EIMN_L", 2, "Set5"): (38.25, 0.9619), ("EIMN_A", 4, "Set14"): (28.89, 0.7881)}
