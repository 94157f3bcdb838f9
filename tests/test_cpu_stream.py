"""Streaming (non-temporal) stores of the CPU kernels (csrc/cpu/cpu_stream.h): proj_qv, gate_out, conv1x1 and
dw_mix (per-plane path) stream their image-sized outputs when these reach EIMN_STREAM_MIN_MB (8 MiB by default).
The stores change how values reach memory, never the values: with every output streamed (EIMN_STREAM_MIN_MB=0, in
a subprocess, as the bound is read once) each op returns the same bits as with plain stores (this process: the
test tensors are far below 8 MiB). Widths that keep rows 64-byte aligned (streamed) and widths that do not (the
plain fallback), partial last panels, float32 and float64, every conv1x1 epilogue.
"""
import os
import subprocess
import sys

import pytest
import torch

import eimn_kernels as ek

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not ek.backend_status("cpu", "cpu")[0], reason="the cpu backend is not built")

# Each case returns a list of output tensors; run here and in the subprocess from the same seed.
CODE = r"""
import torch, eimn_kernels  # noqa: F401
C = torch.ops.eimn_C


def outputs():
    g = torch.Generator().manual_seed(0)
    out = []
    for dtype in (torch.float32, torch.float64):
        r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)
        e = torch.empty(0, dtype=dtype)
        # (N, C, H, W): 16 x 20 pixels (rows 64-byte aligned: streamed), 13 x 11 (unaligned), 5 x 9 (one partial panel)
        for (N, Ch, H, W) in ((2, 16, 16, 20), (1, 24, 13, 11), (1, 8, 5, 9)):
            x = r(N, Ch, H, W)
            wq, bq, wv, bv = r(Ch, Ch, 1, 1), r(Ch), r(Ch, Ch, 1, 1), r(Ch)
            out += list(C.proj_qv_forward(x, wq, bq, wv, bv))
            v = r(N, Ch, H, W)
            out.append(C.gate_out_forward(x, v, wq, bq, wv, bv))
            w2, b2 = r(2 * Ch, Ch, 1, 1), r(2 * Ch)
            gate, res = r(N, 2 * Ch, H, W), r(N, 2 * Ch, H, W)
            for act in (0, 1):
                for gt in (e, gate):
                    for rs in (e, res):
                        out.append(C.conv1x1_forward(x, w2, b2, gt, rs, act))
        # dw_mix's per-plane path (>= 30 pixels wide): rows of 32 pixels (aligned) and 45 (not)
        for (H, W) in ((9, 32), (7, 45)):
            a = (r(1, 16, H, W), r(16, 1, 5, 5), r(16), r(6, 1, 5, 5), r(6), r(8, 1, 7, 7), r(8))
            out.append(C.dw_mix_forward(*a, 6, 2, 1, 2, 3))
    return out
"""


def test_streamed_outputs_have_the_bits_of_plain_stores(tmp_path):
    ns = {}
    exec(CODE, ns)
    plain = ns["outputs"]()
    path = tmp_path / "streamed.pt"
    script = CODE + f"\ntorch.save(outputs(), {str(path)!r})\n"
    env = dict(os.environ, EIMN_STREAM_MIN_MB="0")
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    streamed = torch.load(path)
    assert len(streamed) == len(plain) == 2 * (3 * (2 + 1 + 8) + 2)
    for i, (a, b) in enumerate(zip(plain, streamed)):
        assert a.dtype == b.dtype and torch.equal(a, b), f"output {i} differs when streamed"
