"""GPU experiment for the Triton MOLRCM kernels: the fp32 ``tl.dot`` precision (``ieee``, ``tf32x3``, ``tf32``).

For each precision: time and accuracy (max relative error vs a float64 reference of the same inputs) of the two
GEMM ops (proj_qv, gate_out) and of the whole MOLRCM layer, forward and forward+backward. The H100 run of
2026-11-25 found the exact-fp32 (``ieee``) Triton 1x1 backward kernels 4.6x slower than eager: this says in one
call what ``tf32x3`` (three TF32 tensor-core products, near-fp32 accuracy) buys and whether it keeps the 1e-5
forward bar. ``molrcm_config.FP32_DOT_PRECISION`` is the setting it varies.

    python -m benchmarks.dot_precision [--shape 16x64x64x64] [--precisions ieee,tf32x3,tf32] [--json FILE]

On CPU it runs under the Triton interpreter (``TRITON_INTERPRET=1``, tiny shapes, no timing): the interpreter
computes every precision in full fp32, so that checks the plumbing only.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from .harness import max_rel_err, tensor_list, time_fn

__all__ = ["run", "main"]


def _cases(shape, device):
    """name -> (fn(backend, *tensors), fp32 input tensors); parameters of an EIMN MOLRCM of C channels."""
    import eimn_kernels as ek
    from eimn.model import MOLRCM
    n, c, h, w = shape
    g = torch.Generator().manual_seed(0)
    m = MOLRCM(c).to(device)
    x = torch.randn(n, c, h, w, generator=g).to(device)
    y = torch.randn(n, c, h, w, generator=g).to(device)
    pq, pv = m.proj_query[0], m.proj_value[0]
    return {
        "proj_qv": (lambda b, x, *p: ek.proj_qv(x, *p, backend=b),
                    [x, pq.weight, pq.bias, pv.weight, pv.bias]),
        "gate_out": (lambda b, y, v, *p: ek.gate_out(y, v, *p, backend=b),
                     [y, x, m.fusion.weight, m.fusion.bias, m.out.weight, m.out.bias]),
        "molrcm": (lambda b, x, *p, m=m: torch.func.functional_call(
            ek.MOLRCM.from_module(m, backend=b), dict(zip([k for k, _ in m.named_parameters()], p)), (x,)),
                   [x, *m.parameters()]),
    }


def _fwd_bwd(fn, backend, ts):
    ts = [t.detach().requires_grad_() for t in ts]
    outs = tensor_list(fn(backend, *ts))
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    return outs, [t.grad for t in ts]


def run(shape=(16, 64, 64, 64), precisions=("ieee", "tf32x3", "tf32"), device=None, timing=True) -> list[dict]:
    """Rows {case, precision, fwd_err, grad_err, fwd_ms, fwd_bwd_ms} for each case and precision."""
    from eimn_kernels.triton_kernels import molrcm_config as cfg
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows, saved = [], cfg.FP32_DOT_PRECISION
    try:
        for name, (fn, ts) in _cases(shape, device).items():
            ref_outs, ref_grads = _fwd_bwd(fn, "reference", [t.double() for t in ts])
            for prec in precisions:
                cfg.FP32_DOT_PRECISION = prec
                outs, grads = _fwd_bwd(fn, "triton", ts)
                row = {"case": name, "shape": "x".join(map(str, shape)), "precision": prec,
                       "fwd_err": max_rel_err(outs, ref_outs), "grad_err": max_rel_err(grads, ref_grads)}
                if timing:
                    with torch.no_grad():
                        row["fwd_ms"] = time_fn(lambda: fn("triton", *ts), device).median_s * 1e3
                    row["fwd_bwd_ms"] = time_fn(lambda: _fwd_bwd(fn, "triton", ts), device).median_s * 1e3
                rows.append(row)
    finally:
        cfg.FP32_DOT_PRECISION = saved
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="16x64x64x64", help="N x C x H x W")
    ap.add_argument("--precisions", default="ieee,tf32x3,tf32")
    ap.add_argument("--json", help="write the rows to this file")
    a = ap.parse_args(argv)
    shape = tuple(int(s) for s in a.shape.split("x"))
    precs = tuple(p for p in a.precisions.split(",") if p)
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available() and not interp:
        ap.error("needs a CUDA GPU, or TRITON_INTERPRET=1 for a CPU smoke run")
    rows = run(shape, precs, timing=not interp)
    print(f"{'case':9s} {'precision':9s} {'fwd err':>9s} {'grad err':>9s} {'fwd ms':>8s} {'fwd+bwd ms':>10s}")
    for r in rows:
        print(f"{r['case']:9s} {r['precision']:9s} {r['fwd_err']:9.1e} {r['grad_err']:9.1e} "
              f"{r.get('fwd_ms', float('nan')):8.3f} {r.get('fwd_bwd_ms', float('nan')):10.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
