"""Quick CPU timing of the fused SADFFM (backend='cpu') against the eager eimn.model.SADFFM.

Usage: python benchmarks/bench_sadffm_cpu.py [reps=3] [threads=2] [NxCxHxW ...]
Prints min-of-reps times (ms), interleaved over two rounds so that load changes hit both sides, and the
ratios eager / fused for the whole layer and per op (gated_dwconv vs reference.gated_dwconv, dffm_out vs
reference.dffm_out), forward (no_grad) and forward+backward.
"""
import sys
import time

import torch

import eimn_kernels as ek
from eimn.model import SADFFM
from eimn_kernels import reference


def tmin(fn, reps):
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    shapes = [tuple(map(int, s.split("x"))) for s in sys.argv[3:]] or [(1, 64, 180, 320), (4, 64, 64, 64)]
    torch.manual_seed(0)
    m = SADFFM(64)
    f = ek.SADFFM.from_module(m, backend="cpu")
    L, S, d = f.linear_in, f.SAL, f.DFFM
    dw = (f.linear_out.weight, f.linear_out.bias, d.norm.weight, d.norm.bias, d.global_reduce.weight,
          d.global_reduce.bias, d.local_reduce.weight, d.local_reduce.bias, d.channel_expand.weight,
          d.channel_expand.bias, d.spatial_expand.weight, d.spatial_expand.bias)
    for shp in shapes:
        x = torch.randn(*shp)
        with torch.no_grad():
            h = reference.gated_dwconv(x, L.weight, L.bias, S.weight, S.bias)
        xg, hg = x.clone().requires_grad_(), h.clone().requires_grad_()
        cases = {
            "layer": (lambda t: m(t), lambda t: f(t), x, xg),
            "gated_dwconv": (lambda t: reference.gated_dwconv(t, L.weight, L.bias, S.weight, S.bias),
                             lambda t: ek.gated_dwconv(t, L.weight, L.bias, S.weight, S.bias, backend="cpu"), x, xg),
            "dffm_out": (lambda t: reference.dffm_out(t, *dw), lambda t: ek.dffm_out(t, *dw, backend="cpu"), h, hg),
        }
        res = {}
        for _ in range(2):
            for name, (eager, fused, a, ag) in cases.items():
                for tag, fn, inp in (("eager", eager, a), ("fused", fused, a)):
                    with torch.no_grad():
                        k = (name, "fwd", tag)
                        res[k] = min(res.get(k, float("inf")), tmin(lambda: fn(inp), reps))
                for tag, fn in (("eager", eager), ("fused", fused)):
                    k = (name, "fwd+bwd", tag)
                    res[k] = min(res.get(k, float("inf")), tmin(lambda: fn(ag).sum().backward(), reps))
        for name in cases:
            for mode in ("fwd", "fwd+bwd"):
                e, fu = res[(name, mode, "eager")], res[(name, mode, "fused")]
                print(f"{'x'.join(map(str, shp)):>14} {name:>13} {mode:>8}: eager {e:8.1f} ms  fused {fu:8.1f} ms"
                      f"  ratio {e / fu:5.2f}", flush=True)


if __name__ == "__main__":
    main()
