"""Interleaved A/B of the fused channel LayerNorm in the whole model: the folded EIMN_L
(eimn_kernels.optimize_for_inference, cpu backend) against the same model with nn.LayerNorm put back in place of
every ChannelLayerNorm (same weights), one call of each per round in one process.

    python -m benchmarks.norm_swap [--scale 2] [--lr 360x640] [--rounds 3] [--threads 2] [--malloc default|steady]

Prints the largest output difference and, per round, both times and their ratio (> 1: the fused norm is faster).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

import eimn_kernels as ek
from eimn.model import EIMN_L

from .harness import add_malloc_arg, set_malloc_mode

__all__ = ["with_layer_norms", "main"]


def with_layer_norms(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a fused EIMN whose ChannelLayerNorms are nn.LayerNorm again (shared weights)."""
    out = copy.deepcopy(model)
    for name in out.channel_norm_names():
        n = getattr(out, name)
        ln = torch.nn.LayerNorm(n.dim, eps=n.eps)
        ln.weight, ln.bias = n.weight, n.bias
        setattr(out, name, ln)
    return out


def main(argv=None) -> list[tuple[float, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--lr", default="360x640", help="LR image H x W")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    add_malloc_arg(ap)
    a = ap.parse_args(argv)
    print(set_malloc_mode(a.malloc))
    torch.set_num_threads(a.threads)
    h, w = (int(s) for s in a.lr.split("x"))
    torch.manual_seed(0)
    new = ek.optimize_for_inference(EIMN_L(scale=a.scale).eval(), backend="cpu")
    old = with_layer_norms(new)
    x = torch.rand(1, 3, h, w)
    rounds = []
    with torch.no_grad():
        print(f"max |difference| {(old(x) - new(x)).abs().max().item():.3g}")
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            old(x)
            t1 = time.perf_counter()
            new(x)
            t2 = time.perf_counter()
            rounds.append((t1 - t0, t2 - t1))
            print(f"nn.LayerNorm {1e3 * (t1 - t0):9.1f} ms   ChannelLayerNorm {1e3 * (t2 - t1):9.1f} ms   "
                  f"x{(t1 - t0) / (t2 - t1):.2f}", flush=True)
    return rounds


if __name__ == "__main__":
    main()
