"""Shared test setup: ../shared discovery, Triton interpreter on CPU-only machines, backend lists."""
import os
import pathlib

# Without a GPU, Triton kernels run (slowly) in the interpreter on CPU tensors.
# Must be set before triton is imported anywhere.
try:
    import torch
    _has_cuda = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # The eager reference on CUDA: cuDNN convolutions use TF32 for float32 by default (relative error ~3e-4),
    # which would make the reference, not the kernel under test, miss the 1e-5 float32 bar.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts) -> pathlib.Path:
    """Path under ../shared; skips the test with a clear message if it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"ground truth not found: {p} (put the read-only shared/ folder beside the repo)")
    return p


@pytest.fixture
def shared():
    return shared_path


def skip_unless_backend(name: str, device: str) -> None:
    """Skip the calling test, with the backend's own reason, when backend ``name`` cannot run on ``device`` here."""
    import torch
    import eimn_kernels as ek
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"backend {name!r}: no CUDA device here")
    ok, why = ek.backend_status(name, device)
    if not ok:
        pytest.skip(f"backend {name!r} unavailable: {why}")


def kernel_backends(device: str = "cpu"):
    """Kernel backends ('cpu', 'triton', 'cuda') runnable here for ``device``."""
    import eimn_kernels as ek
    return [b for b in ("cpu", "triton", "cuda") if ek.backend_status(b, device)[0]]


@pytest.fixture(scope="module")
def test_threads():
    """EIMN_TEST_THREADS=N: torch CPU threads for in-process model runs (1 on a busy machine); restored after."""
    import torch
    n = int(os.environ.get("EIMN_TEST_THREADS", "0"))
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    yield
    torch.set_num_threads(old)
