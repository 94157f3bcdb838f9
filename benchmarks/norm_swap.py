"""Interleaved A/B of the LayerNorms between blocks in the whole model: the folded EIMN_L
(eimn_kernels.optimize_for_inference, cpu backend: each LayerNorm applied, with the block's second residual, in the
SADFFM kernel's last pass) against the same model with the LayerNorms put back between the blocks as modules of
their own (same weights): nn.LayerNorm (``--a nn``, PyTorch's, with the model's permutes) or the fused
ChannelLayerNorm op (``--a channel``). One call of each per round in one process.

    python -m benchmarks.norm_swap [--a nn|channel] [--scale 2] [--lr 360x640] [--rounds 3] [--threads 2]
        [--malloc default|steady]

Prints the largest output difference and, per round, both times and their ratio (> 1: B, the folded model, is
faster).
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


def with_layer_norms(model: torch.nn.Module, kind: str = "nn") -> torch.nn.Module:
    """A copy of a folded EIMN whose LayerNorms between blocks are modules of their own again (shared weights):
    nn.LayerNorm (``kind="nn"``) or ChannelLayerNorm (``"channel"``), taken out of the folded blocks."""
    if kind not in ("nn", "channel"):
        raise ValueError(f"kind must be 'nn' or 'channel', got {kind!r}")
    out = copy.deepcopy(model)
    for i, name in enumerate(out.channel_norm_names(), start=1):
        blk = getattr(out, f"block{i}")[0]
        n = getattr(blk, "norm", None) or getattr(out, name)
        if getattr(blk, "norm", None) is not None:
            blk.norm = None
        if kind == "nn":
            ln = torch.nn.LayerNorm(n.dim, eps=n.eps)
            ln.weight, ln.bias = n.weight, n.bias
        else:
            ln = n
        setattr(out, name, ln)
    return out


def main(argv=None) -> list[tuple[float, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", choices=("nn", "channel"), default="nn", help="the A side's LayerNorm modules")
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
    old = with_layer_norms(new, a.a)
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
            print(f"A ({a.a} LayerNorm modules) {1e3 * (t1 - t0):9.1f} ms   B (folded) {1e3 * (t2 - t1):9.1f} ms   "
                  f"x{(t1 - t0) / (t2 - t1):.2f}", flush=True)
    return rounds


if __name__ == "__main__":
    main()
