"""The model table of a lent GPU's one prepared call (``scripts/gpu_check.sh quick``), within a time budget.

Cases (batch 1, seeded random weights, BatchNorm statistics perturbed so folding is exercised): EIMN_L x4 at LR
320x180 and EIMN_L x2 at LR 480x640. Rows per case, in this order until the budget is spent: eager fp32 (torch's
defaults: cuDNN TF32), eager fp16 autocast, then folded models in fp32 / fp16 / bf16 (autocast for the half types),
each without and with CUDA graphs (``optimize_for_inference(cuda_graphs=True)``): first the NHWC block kernels
(folded[nhwc-cuda], folded[nhwc-triton]), then each kernel backend's per-layer fused ops (folded[<backend>], fp32);
then the EIMN_L x2 training step in fp32 and AMP (benchmarks.model.bench_training), a torch.profiler kernel table
of one folded block, and last torch.compile of the eager model (default and reduce-overhead) for EIMN_L x4.
Every row has its max relative error against eager fp32 of the same case. Writes ``gpu-quick.json`` and
``gpu-quick.md`` to --out and appends the rows to the results log there (benchmarks.history).

    python -m benchmarks.gpu_quick --out $OUT [--budget-s 200] [--device cuda] [--smoke] [--no-record]

``--smoke``: a tiny EIMN on a small input, for a check of the script itself on any device.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import eimn_kernels as ek
from eimn.model import EIMN

from .harness import error_text, machine_info, max_rel_err, measure
from .model import _autocast, _seeded, bench_training, format_rows
from .ops import kernel_backends

__all__ = ["CASES", "run", "profile_block", "main"]

CASES = (("EIMN_L", 4, (180, 320)), ("EIMN_L", 2, (480, 640)))
PRECISIONS = ("fp32", "fp16", "bf16")


def _autocast_any(device: str, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return _autocast(device, precision)


def _variants(eager, backends: list[str], device: str) -> list[tuple[str, str, object]]:
    """(variant, precision, model) in the order they are timed (compile comes later, see run). Off CUDA (a smoke
    run) fp32 only: the cpu backend has no half-precision kernels."""
    precisions = PRECISIONS if device == "cuda" else ("fp32",)
    out = [("eager", "fp32", eager)] + ([("eager", "fp16", eager)] if device == "cuda" else [])
    # the NHWC block kernels first (the GPU path optimize_for_inference takes by default), then each backend's
    # per-layer fused ops
    from eimn_kernels.nhwc import cuda_block_available
    builds = [("nhwc-cuda", "cuda", True)] if device == "cuda" and cuda_block_available() else []
    builds += [("nhwc-triton", "triton", True)] if "triton" in backends else []
    builds += [(b, b, False) for b in backends]
    for label, b, nhwc in builds:
        folded = ek.optimize_for_inference(eager, backend=b, nhwc=nhwc)
        graphed = (ek.optimize_for_inference(eager, backend=b, cuda_graphs=True, nhwc=nhwc) if device == "cuda"
                   else None)
        # the per-layer paths (measured in every dtype before) in fp32 only, to leave the budget to the rest
        for p in precisions if nhwc else ("fp32",):
            out.append((f"folded[{label}]", p, folded))
            if graphed is not None:
                out.append((f"folded[{label}]+graphs", p, graphed))
    return out


def _row(name, scale, lr, prec, vname, device, model, x, want, tkw) -> dict:
    row = {"group": "inference", "model": name, "scale": scale, "lr": f"{lr[1]}x{lr[0]}", "precision": prec,
           "variant": vname, "device": device}

    def fn():
        with torch.no_grad(), _autocast_any(device, prec):
            return model(x)
    try:
        out = fn().float()
        row["max_rel_err"] = max_rel_err(out, want) if want is not None else 0.0
        del out
        t = measure(fn, device, memory=False, **tkw)
    except Exception as e:  # record and go on: one broken path must not end the lent machine's only call
        row["error"] = error_text(e)
        return row
    row.update(median_ms=t.median_s * 1e3, iqr_ms=t.iqr_s * 1e3, q1_ms=t.q1_s * 1e3, q3_ms=t.q3_s * 1e3, n=t.n,
               method=t.method, fps=1.0 / t.median_s)
    return row


def _speedups(rows: list[dict]) -> None:
    """speedup_vs_eager: eager fp32's median of the same case / the row's median."""
    for r in rows:
        base = next((e for e in rows if e.get("variant") == "eager" and e.get("precision") == "fp32"
                     and e.get("model") == r.get("model") and e.get("scale") == r.get("scale")
                     and e.get("lr") == r.get("lr") and e.get("group") == r.get("group") and "median_ms" in e), None)
        if base is not None and "median_ms" in r:
            r["speedup_vs_eager"] = base["median_ms"] / r["median_ms"]


def profile_block(device: str, precision: str = "fp32", size=(180, 320), dim: int = 64, row_limit: int = 15) -> str:
    """torch.profiler table (sorted by device time) of one folded EIMN block and the LayerNorm after it, forward on
    (1, dim, *size), as optimize_for_inference runs them on ``device`` (on a GPU: the five NHWC block kernels)."""
    from torch.profiler import ProfilerActivity, profile
    model = _seeded("EIMN_L", 4, device) if dim == 64 else EIMN(embed_dims=dim, scale=2, num_stages=1).to(device)
    folded = ek.optimize_for_inference(model, nhwc=device == "cuda")
    block = torch.nn.Sequential(folded.block1, folded.norm1)
    x = torch.rand(1, dim, *size, device=device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.no_grad(), _autocast_any(device, precision):
        for _ in range(3):
            block(x)
        if device == "cuda":
            torch.cuda.synchronize()
        with profile(activities=acts) as prof:
            block(x)
            if device == "cuda":
                torch.cuda.synchronize()
    key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=row_limit)


def run(device: str = "cuda", budget_s: float = 200.0, smoke: bool = False) -> dict:
    """The rows, notes and profile tables; stops adding rows once ``budget_s`` seconds have passed."""
    t0 = time.perf_counter()
    notes: list[str] = []
    backends, skipped = kernel_backends(device)
    notes += skipped
    cases = (("EIMN_tiny", 2, (12, 16)),) if smoke else CASES
    tkw = dict(warmup=2, min_run_time=0.05 if smoke else 0.3, min_samples=3 if smoke else 5, max_time=10.0)
    rows: list[dict] = []

    def over() -> bool:
        if time.perf_counter() - t0 > budget_s:
            if not any(n.startswith("budget") for n in notes):
                notes.append(f"budget of {budget_s:.0f} s spent: the remaining rows were not timed")
            return True
        return False
    for name, scale, lr in cases:
        torch.manual_seed(0)
        eager = (EIMN(embed_dims=16, scale=scale, num_stages=2).to(device).eval() if smoke
                 else _seeded(name, scale, device).eval())
        x = torch.rand(1, 3, *lr, device=device)
        with torch.no_grad():
            want = eager(x).float()
        for vname, prec, model in _variants(eager, backends, device):
            if over():
                break
            rows.append(_row(name, scale, lr, prec, vname, device, model, x, want, tkw))
        del eager, x, want
    if not over():
        rows += bench_training(device, quick=smoke, notes=notes, batch=2 if smoke else 4,
                               lr_size=16 if smoke else 64, tkw=tkw)
    profiles = {}
    for prec in ("fp32", "fp16") if device == "cuda" else ("fp32",):
        if over():
            break
        try:
            profiles[prec] = profile_block(device, prec, size=(12, 16) if smoke else (180, 320),
                                           dim=16 if smoke else 64)
        except Exception as e:
            notes.append(f"profile {prec}: {error_text(e)}")
    if not smoke and device == "cuda":
        name, scale, lr = CASES[0]
        eager = _seeded(name, scale, device).eval()
        x = torch.rand(1, 3, *lr, device=device)
        with torch.no_grad():
            want = eager(x).float()
        for mode in ("default", "reduce-overhead"):
            if over() or budget_s - (time.perf_counter() - t0) < 45:  # compiling EIMN_L takes tens of seconds
                notes.append(f"compile[{mode}] not timed: less than 45 s of the budget left")
                break
            torch._dynamo.reset()
            t1 = time.perf_counter()
            compiled = torch.compile(eager, mode=mode)
            row = _row(name, scale, lr, "fp32", f"compile[{mode}]", device, compiled, x, want, tkw)
            row["compile_s"] = time.perf_counter() - t1
            rows.append(row)
    _speedups(rows)
    return {"machine": machine_info(device), "model": rows, "notes": notes, "profiles": profiles,
            "wall_s": time.perf_counter() - t0}


def to_markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# GPU quick check: {m.get('gpu') or m.get('cpu_model')} ({m.get('date_utc')})", "",
             f"torch {m.get('torch')}, triton {m.get('triton')}; {res['wall_s']:.0f} s.", "",
             format_rows(res["model"]), ""]
    lines += [f"- {n}" for n in res["notes"]]
    for prec, table in res["profiles"].items():
        lines += ["", f"## One folded block, {prec}: torch.profiler", "", "```", table, "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".", help="folder for gpu-quick.json / .md and the results log")
    ap.add_argument("--budget-s", type=float, default=200.0, help="stop adding rows after this many seconds")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--smoke", action="store_true", help="a tiny model and input (a check of the script)")
    ap.add_argument("--no-record", action="store_true", help="do not append the rows to the results log")
    a = ap.parse_args(argv)
    res = run(a.device, a.budget_s, a.smoke)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gpu-quick.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    md = to_markdown(res)
    with open(os.path.join(a.out, "gpu-quick.md"), "w") as f:
        f.write(md)
    print(md)
    if not a.no_record:
        from .history import record
        record(res, " ".join(["python -m benchmarks.gpu_quick", *(sys.argv[1:] if argv is None else argv)]),
               a.out)
    return res


if __name__ == "__main__":
    main()
