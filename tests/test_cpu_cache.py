"""The CPU kernels' cache of freed large buffers (csrc/cpu/cpu_pool.h; eimn_kernels.cpu_cache_info / empty_cpu_cache)."""
import os
import subprocess
import sys

import pytest
import torch

import eimn_kernels as ek
from eimn_kernels import reference

pytestmark = pytest.mark.skipif(not ek.backend_status("cpu", "cpu")[0], reason="cpu backend unavailable")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gated(N=2, C=16, hid=40, H=64, W=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g)
    ws = [torch.randn(2 * hid, C, 1, 1, generator=g) * 0.2, torch.randn(2 * hid, generator=g) * 0.1,
          torch.randn(2 * hid, 1, 3, 3, generator=g) * 0.3, torch.randn(2 * hid, generator=g) * 0.1]
    return x, ws


def test_outputs_reuse_freed_buffers():
    """A freed output (>= 1 MiB) comes back for the next call of the same size; live outputs never share memory;
    a reused buffer holds the new result only."""
    if ek.cpu_cache_info()["cap_bytes"] == 0:
        pytest.skip("EIMN_CPU_POOL_MB=0: the cache is off")
    x, ws = _gated()
    ek.empty_cpu_cache()
    h1 = ek.gated_dwconv(x, *ws, backend="cpu")  # 2*40*64*64*4 B = 1.25 MiB
    h2 = ek.gated_dwconv(x * 2, *ws, backend="cpu")
    assert h1.data_ptr() != h2.data_ptr()
    p1 = h1.data_ptr()
    del h1
    info = ek.cpu_cache_info()
    assert info["cached_blocks"] >= 1 and info["cached_bytes"] >= 2 * 40 * 64 * 64 * 4
    hits = info["hits"]
    x3, _ = _gated(seed=3)
    h3 = ek.gated_dwconv(x3, *ws, backend="cpu")
    assert h3.data_ptr() == p1 and ek.cpu_cache_info()["hits"] == hits + 1
    torch.testing.assert_close(h3, reference.gated_dwconv(x3, *ws), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h2, reference.gated_dwconv(x * 2, *ws), rtol=1e-5, atol=1e-5)
    ek.empty_cpu_cache()
    assert ek.cpu_cache_info()["cached_bytes"] == 0


def test_training_steps_same_gradients_with_cache():
    """Training steps that reuse cached stashes and outputs give the same gradients every step."""
    torch.manual_seed(0)
    m = ek.SADFFM(16, backend="cpu")
    x = torch.randn(2, 16, 48, 40, requires_grad=True)
    go = torch.randn(2, 16, 48, 40)
    grads = []
    for _ in range(3):
        out = m(x)
        grads.append(torch.autograd.grad(out, [x, *m.parameters()], go))
    for a, b in zip(grads[0], grads[2]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mb", ["0", "1"])
def test_cap_from_environment(mb):
    """EIMN_CPU_POOL_MB caps what the cache holds (0: off, nothing cached; 1 MiB: a 1.25 MiB block is not kept)."""
    code = ("import torch, eimn_kernels as ek\n"
            "x = torch.randn(2, 16, 64, 64)\n"
            "ws = [torch.randn(80, 16, 1, 1), torch.randn(80), torch.randn(80, 1, 3, 3), torch.randn(80)]\n"
            "h = ek.gated_dwconv(x, *ws, backend='cpu'); del h\n"
            "i = ek.cpu_cache_info(); print(i['cap_bytes'], i['cached_bytes'])\n")
    env = dict(os.environ, EIMN_CPU_POOL_MB=mb, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cap, cached = map(int, out.stdout.split()[-2:])
    assert cap == int(mb) << 20 and cached == 0


def test_molrcm_outputs_come_from_the_cache():
    """The MOLRCM CPU ops take their image-sized outputs (here 1 MiB each) from the cache too: a second training
    step reuses the first step's freed buffers and gives the same output and gradients."""
    if ek.cpu_cache_info()["cap_bytes"] == 0:
        pytest.skip("EIMN_CPU_POOL_MB=0: the cache is off")
    torch.manual_seed(0)
    m = ek.MOLRCM(16, backend="cpu")
    x = torch.randn(1, 16, 128, 128, requires_grad=True)  # 16*128*128*4 B = 1 MiB per activation
    go = torch.randn(1, 16, 128, 128)
    ek.empty_cpu_cache()
    steps = []
    for _ in range(2):
        hits = ek.cpu_cache_info()["hits"]
        out = m(x)
        steps.append((out.detach(), torch.autograd.grad(out, [x, *m.parameters()], go)))
        del out
        steps[-1] += (ek.cpu_cache_info()["hits"] - hits,)
    assert steps[1][2] >= 3, steps[1][2]  # q, v, the mixed map, the output and the gradients come back
    assert torch.equal(steps[0][0], steps[1][0])
    for a, b in zip(steps[0][1], steps[1][1]):
        assert torch.equal(a, b)
