"""Backend choice: auto, forced backends, clear errors for unknown / unavailable / unsupported."""
import pytest
import torch

import eimn_kernels as ek
from eimn_kernels.backends import resolve_backend


def test_reference_always_available():
    assert ek.available_backends("cpu")[0] == "reference"


def test_auto_on_cpu_picks_cpu_kernels_for_float32_and_float64():
    x = torch.zeros(1, 8, 4, 4)
    want = "cpu" if ek.backend_status("cpu", "cpu")[0] else "reference"
    assert resolve_backend("auto", x) == want
    assert resolve_backend("auto", x.double()) == want


def test_auto_falls_back_to_reference_for_half_on_cpu():
    assert resolve_backend("auto", torch.zeros(1, 8, 4, 4, dtype=torch.bfloat16)) == "reference"


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("mkl", torch.zeros(1, 8, 4, 4))


def test_cuda_backend_on_cpu_tensor_is_a_clear_error():
    with pytest.raises(RuntimeError, match="not available for cpu tensors"):
        resolve_backend("cuda", torch.zeros(1, 8, 4, 4))


def test_unsupported_dtype_for_cpu_backend():
    if not ek.backend_status("cpu", "cpu")[0]:
        pytest.skip("cpu backend not built")
    with pytest.raises(TypeError, match="does not support torch.float16"):
        resolve_backend("cpu", torch.zeros(1, 8, 4, 4, dtype=torch.float16))


def test_functional_api_rejects_bad_input_before_any_kernel():
    q = torch.randn(1, 8, 5, 5)
    w0, b0 = torch.randn(8, 1, 5, 5), torch.randn(8)
    w1, b1 = torch.randn(3, 1, 5, 5), torch.randn(3)
    w2, b2 = torch.randn(4, 1, 7, 7), torch.randn(4)
    with pytest.raises(ValueError, match="4-d"):
        ek.dw_mix(q[0], w0, b0, w1, b1, w2, b2, 3, 1, backend="reference")
    with pytest.raises(ValueError, match="does not fit"):
        ek.dw_mix(q, w0, b0, w1, b1, w2, b2, 6, 4, backend="reference")
    with pytest.raises(ValueError, match="w2 must have shape"):
        ek.dw_mix(q, w0, b0, w1, b1, w2, b2, 3, 2, backend="reference")
    with pytest.raises(TypeError, match="dtype"):
        ek.dw_mix(q.double(), w0, b0, w1, b1, w2, b2, 3, 1, backend="reference")
    with pytest.raises(ValueError, match="square odd-sized"):
        ek.dw_mix(q, torch.randn(8, 1, 4, 4), b0, w1, b1, w2, b2, 3, 1, backend="reference")
