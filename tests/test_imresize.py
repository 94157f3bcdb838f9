"""eimn.imresize against MATLAB imresize's known bicubic weights and boundary rule."""
import numpy as np
import pytest

from eimn.imresize import contributions, cubic, imresize, resize_matrix

# MATLAB's bicubic (a = -0.5) antialiased x1/2 filter: the classic 8 taps
DOWN2 = np.array([-0.01171875, -0.03515625, 0.11328125, 0.43359375,
                  0.43359375, 0.11328125, -0.03515625, -0.01171875])
# x1/3: cubic(d/3)/3 for d = -5..5, exact fractions
DOWN3 = np.array([-1 / 27, -2 / 27, 0, 1 / 3, 7 / 9, 1, 7 / 9, 1 / 3, 0, -2 / 27, -1 / 27]) / 3
# x2 upscale, output pixel at u = x/2 + 1/4: taps at distances 1.25, 0.25, -0.75, -1.75
UP2 = np.array([-0.0703125, 0.8671875, 0.2265625, -0.0234375])


def test_cubic_kernel_values():
    x = np.array([0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, -0.5])
    want = [1, 0.8671875, 0.5625, 0.2265625, 0, -0.0703125, -0.0625, -0.0234375, 0, 0, 0.5625]
    np.testing.assert_allclose(cubic(x), want, atol=1e-15)


def test_downscale_x2_weights_interior():
    m = resize_matrix(32, 16, 0.5)
    i = 8                         # 0-based output 8 is centred between inputs 16 and 17
    np.testing.assert_allclose(m[i, 13:21], DOWN2, atol=1e-15)
    assert np.all(m[i, :13] == 0) and np.all(m[i, 21:] == 0)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-14)


def test_downscale_x3_weights_interior():
    m = resize_matrix(30, 10, 1 / 3)
    i = 5                         # centre at input 3*5 + 1 = 16 (0-based)
    np.testing.assert_allclose(m[i, 11:22], DOWN3, atol=1e-15)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-14)


def test_upscale_x2_weights():
    m = resize_matrix(8, 16, 2.0)
    np.testing.assert_allclose(m[3, 0:4], UP2, atol=1e-15)   # output 3 at u = 2.25 (1-based)


def test_symmetric_boundary_x2_down():
    # output 0 mirrors inputs -3..-1 onto 2, 1, 0 (edge pixel repeated), zero taps dropped
    v = np.arange(1.0, 9.0) ** 2
    out = imresize(v[None, :], scale=0.5)[0]
    want0 = DOWN2 @ np.array([v[2], v[1], v[0], v[0], v[1], v[2], v[3], v[4]])
    want3 = DOWN2 @ np.array([v[3], v[4], v[5], v[6], v[7], v[7], v[6], v[5]])
    assert out.shape == (4,)
    np.testing.assert_allclose(out[0], want0, rtol=1e-14)
    np.testing.assert_allclose(out[3], want3, rtol=1e-14)
    w, idx = contributions(8, 4, 0.5)
    assert w.shape == (4, 8) and idx.min() >= 0 and idx.max() <= 7


def test_upscale_reproduces_linear_ramp_inside():
    v = np.arange(1.0, 11.0)
    out = imresize(v[None, :], scale=2)[0]
    u = np.arange(1, 21) / 2 + 0.25          # MATLAB's input coordinate of each output pixel
    np.testing.assert_allclose(out[3:-3], u[3:-3], atol=1e-12)   # taps reach 1-based 0 up to out[2]


def test_constant_and_shape_rules():
    img = np.full((13, 17, 3), 0.25)
    out = imresize(img, scale=1 / 3)
    assert out.shape == (5, 6, 3)            # ceil(13/3), ceil(17/3), as MATLAB
    np.testing.assert_allclose(out, 0.25, atol=1e-14)
    assert imresize(img, output_shape=(26, 7)).shape == (26, 7, 3)


def test_separable_height_then_width():
    rng = np.random.default_rng(0)
    img = rng.random((24, 36, 3))
    out = imresize(img, scale=0.25)
    mh, mw = resize_matrix(24, 6, 0.25), resize_matrix(36, 9, 0.25)
    for c in range(3):
        np.testing.assert_allclose(out[..., c], mh @ img[..., c] @ mw.T, atol=1e-13)
    # no antialiasing: plain cubic interpolation with 4 taps
    w, _ = contributions(24, 6, 0.25, antialiasing=False)
    assert w.shape[1] <= 6


def test_bad_arguments():
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4)))
    with pytest.raises(ValueError):
        imresize(np.zeros(4), scale=2)
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4)), scale=-1)
