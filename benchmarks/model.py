"""Whole-model benchmark: EIMN inference at a 1280x720 HR output and a training step.

Inference rows (batch 1): ``eager`` (eimn.model, eval), ``fused[<backend>]`` (eimn_kernels.fuse),
``folded[<backend>]`` (eimn_kernels.optimize_for_inference: BN / layer-scale folded, then fused; skipped when
it is not importable) and ``compile`` (torch.compile of the eager model; EIMN_L x4 only (the issue's case), or the quick case on
CUDA: compiling the whole model takes minutes). CPU: fp32. CUDA: fp32 and fp16
autocast, plus EIMN_L x2 on a 640x480 input in fp16 beside the published 7.34 FPS (RTX 4090). ``--peers`` (CPU):
``onnxruntime``, ``openvino[f32]`` and ``openvino[default]`` rows on the model exported to ONNX (eimn.export), every
row's speed-up over eager also as a paired, interleaved ratio, the folded rows' over the fastest peer too, and for the
reduced-precision rows (``folded[cpu,bf16]``: optimize_for_inference(precision="bf16") where the CPU has AVX512-BF16;
``openvino[default]`` where it picks bf16) the PSNR they cost on Set5 with the official weights (../shared; rows of
a model without weights there say so).
Training rows: one step of EIMN_L x2 (L1 loss, backward, Adam), batch 4, LR 64x64, eager vs fused, with peak
memory. Weights are seeded random (speed does not depend on them); outputs are checked against eager.

    python -m benchmarks.model [--quick] [--device cpu|cuda] [--threads 2] [--cases EIMN_A_x4] [--peers] [--json FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import time
from typing import Callable

import torch
import torch.nn.functional as F

import eimn_kernels as ek
from eimn.model import EIMN_A, EIMN_L

from .complexity import LR_SIZES, count_complexity
from .psnr_cost import openvino_default_precision, psnr_costs
from .report import add_record_args, print_result, record_run
from .harness import (add_malloc_arg, add_paired_ratios, error_text, machine_info, max_rel_err, measure, progress,
                      set_malloc_mode)
from .ops import kernel_backends

__all__ = ["PUBLISHED", "inference_plan", "bench_inference", "bench_training", "format_rows", "main"]

# Published reference point (authors): EIMN_L, 480x640, fp16, RTX 4090.
PUBLISHED = {"model": "EIMN_L", "input": "480x640", "dtype": "fp16", "gpu": "NVIDIA GeForce RTX 4090", "fps": 7.34}
_BUILD = {"EIMN_L": EIMN_L, "EIMN_A": EIMN_A}


def inference_plan(device: str, quick: bool, only: list[str] | None = None) -> list[tuple[str, int, tuple[int, int], str]]:
    """(model, scale, LR (H, W), precision) cases. Full: both models at x2/x3/x4 for a 1280x720 output
    (``only``: names like 'EIMN_L_x4' to keep); quick: EIMN_L x4 (on CPU at LR 160x90)."""
    precisions = ("fp32", "fp16") if device == "cuda" else ("fp32",)
    if quick:  # CPU: a quarter of the x4 LR image (HR 640x360) keeps --quick within minutes
        lr = LR_SIZES[4] if device == "cuda" else (LR_SIZES[4][0] // 2, LR_SIZES[4][1] // 2)
        cases = [("EIMN_L", 4, lr, p) for p in precisions]
    else:
        cases = [(m, s, LR_SIZES[s], p) for m in ("EIMN_L", "EIMN_A") for s in (2, 3, 4) for p in precisions
                 if only is None or f"{m}_x{s}" in only]
    if device == "cuda":
        cases.append(("EIMN_L", 2, (480, 640), "fp16"))  # the published FPS point
    return cases


def _timing_kw(quick: bool, threads: int | None, device: str) -> dict:
    if device == "cuda":
        return dict(warmup=3, min_run_time=0.3 if quick else 1.0, min_samples=5, max_time=30.0)
    if quick:
        return dict(warmup=1, min_run_time=0.5, min_samples=2, max_time=12.0, threads=threads)
    return dict(warmup=1, min_run_time=1.0, min_samples=3, max_time=60.0, threads=threads)


def _autocast(device: str, precision: str):
    if precision == "fp16":
        return torch.autocast(device_type=device, dtype=torch.float16)
    return contextlib.nullcontext()


def _seeded(name: str, scale: int, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = _BUILD[name](scale=scale).to(device)
    with torch.no_grad():  # non-trivial BN statistics, so folding is exercised
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


class _OnnxModel:
    """A model exported to ONNX (eimn.export) run by ONNX Runtime or OpenVINO: (N, 3, H, W) float32 tensor in,
    tensor out, like the torch variants."""

    def __init__(self, run, precision: str = "f32"):
        self.run, self.precision = run, precision

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(x.detach().cpu().numpy()))


def _peers(eager: torch.nn.Module, threads: int | None, notes: list, tmpdir: str) -> dict[str, Callable]:
    """ONNX Runtime and OpenVINO (f32, and its default precision: bf16 where the CPU has AMX/AVX512-BF16) on the
    folded model exported to ONNX; the runtimes not installed are skipped with a note."""
    import importlib.util
    import os

    from eimn.export import export_onnx
    have = {m: importlib.util.find_spec(m) is not None for m in ("onnxruntime", "openvino")}
    for m, ok in have.items():
        n = f"model: {m} rows skipped: {m} is not installed (pip install {m})"
        if not ok and n not in notes:
            notes.append(n)
    if not any(have.values()):
        return {}
    path = export_onnx(eager, os.path.join(tmpdir, "model.onnx"), exporter="torchscript")
    out: dict[str, Callable] = {}
    if have["onnxruntime"]:
        import onnxruntime as ort
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        out["onnxruntime"] = _OnnxModel(lambda x, s=sess: s.run(None, {"input": x})[0])
    if have["openvino"]:
        import openvino as ov
        core = ov.Core()
        for name, cfg in (("openvino[f32]", {"INFERENCE_PRECISION_HINT": "f32"}), ("openvino[default]", {})):
            if threads:
                cfg = dict(cfg, INFERENCE_NUM_THREADS=threads)
            compiled = core.compile_model(path, "CPU", cfg)
            out[name] = _OnnxModel(lambda x, c=compiled: c(x)[0], openvino_default_precision(compiled))
    return out


def _variants(eager: torch.nn.Module, backends: list[str], compile: bool, notes: list,
              peers: dict[str, Callable] | None = None) -> dict[str, Callable]:
    """name -> model, for eager / fused / folded / compile (and the ONNX runtimes of ``peers``)."""
    out = {"eager": eager}
    for b in backends:
        out[f"fused[{b}]"] = ek.fuse(copy.deepcopy(eager), backend=b)
    fold = getattr(ek, "optimize_for_inference", None)
    if fold is None:
        n = "folded rows skipped: eimn_kernels.optimize_for_inference is not importable here"
        if n not in notes:
            notes.append(n)
    else:
        for b in backends:
            out[f"folded[{b}]"] = fold(eager, backend=b)
        if "cpu" in backends and ek.bf16_engine():
            out["folded[cpu,bf16]"] = fold(eager, backend="cpu", precision="bf16")
    if compile:
        torch._dynamo.reset()
        out["compile"] = torch.compile(eager, dynamic=False)
    out.update(peers or {})
    return out


def bench_inference(device: str = "cpu", quick: bool = False, threads: int | None = None, compile: bool = True,
                    notes: list | None = None, plan: list | None = None, tkw: dict | None = None,
                    only: list[str] | None = None, peers: bool = False) -> list[dict]:
    """Inference rows, one per (case, variant). ``fps`` = 1 / median; speed-up vs eager of the same case.
    ``peers`` (CPU, fp32): also ONNX Runtime and OpenVINO on the exported folded model."""
    import tempfile
    notes = notes if notes is not None else []
    backends, skipped = kernel_backends(device)
    notes.extend(n for n in skipped if n not in notes)
    tkw = tkw or _timing_kw(quick, threads, device)
    if compile and device == "cpu" and quick:
        compile = False
        notes.append("model: torch.compile rows skipped in --quick on CPU (compiling 16 blocks takes minutes)")
    elif compile:
        notes.append("model: torch.compile rows only for EIMN_L x4 and with --peers (compiling the whole model takes "
                     "minutes)")
    rows = []
    for name, scale, (h, w), prec in progress(plan or inference_plan(device, quick, only), "model inference"):
        eager = _seeded(name, scale, device).eval()
        with torch.device("meta"):
            madds = count_complexity(_BUILD[name](scale=scale), (1, 3, h, w))["multi_adds"]
        x = torch.rand(1, 3, h, w, device=device)
        want = None
        do_compile = compile and (quick or peers or (name, scale) == ("EIMN_L", 4))
        tmp = tempfile.TemporaryDirectory()
        peer = _peers(eager, threads, notes, tmp.name) if peers and device == "cpu" and prec == "fp32" else None
        fns, case_rows = {}, []
        for vname, model in _variants(eager, backends, do_compile, notes, peer).items():
            row = {"group": "inference", "model": name, "scale": scale, "lr": f"{w}x{h}",
                   "hr": f"{w * scale}x{h * scale}", "precision": prec, "variant": vname, "device": device,
                   "multi_adds_G": madds / 1e9}

            def fn(model=model):
                with torch.no_grad(), _autocast(device, prec):
                    return model(x)
            try:
                t0 = time.perf_counter()
                out = fn().float()
                if vname == "compile":
                    row["compile_s"] = time.perf_counter() - t0
                if want is None:
                    want = out
                else:
                    row["max_rel_err"] = max_rel_err(out, want)
                del out
                t = measure(fn, device, **tkw)
            except Exception as e:
                row["error"] = error_text(e)
                rows.append(row)
                continue
            row.update(_timing_fields(t, row, rows), fps=1.0 / t.median_s, GMACs_per_s=madds / t.median_s / 1e9)
            if isinstance(model, _OnnxModel):
                row["runs_precision"] = model.precision
            fns[vname] = fn
            case_rows.append(row)
            if device == "cuda" and (name, (h, w), prec) == ("EIMN_L", (480, 640), "fp16"):
                row["published_fps"] = PUBLISHED["fps"]
                row["published_note"] = f"{PUBLISHED['model']} {PUBLISHED['input']} fp16 on {PUBLISHED['gpu']}"
            rows.append(row)
        if peer:
            _paired_and_psnr(case_rows, fns, name, scale, threads, notes)
        del eager, x, want, peer, fns
        tmp.cleanup()
    return rows


def _paired_and_psnr(case_rows: list[dict], fns: dict, name: str, scale: int, threads: int | None,
                     notes: list) -> None:
    """--peers: each row's speed-up over eager as a paired, interleaved ratio (``paired_vs_eager``), the folded
    rows' over the fastest peer (``paired_vs_best_peer``), and the reduced-precision rows' ``psnr_cost_dB``."""
    peers = [r for r in case_rows if r["variant"].startswith(("onnxruntime", "openvino")) and "median_ms" in r]
    best = min(peers, key=lambda r: r["median_ms"])["variant"] if peers else None
    add_paired_ratios(case_rows, fns, best, rounds=5, threads=threads)
    reduced = [r["variant"] for r in case_rows
               if r["variant"] == "folded[cpu,bf16]" or r.get("runs_precision") not in (None, "f32")]
    costs, note = psnr_costs(name, scale, reduced, threads)
    if note and note not in notes:
        notes.append(note)
    for r in case_rows:
        if r["variant"] in costs:
            r["psnr_cost_dB"] = costs[r["variant"]]


def _same_case(a: dict, b: dict) -> bool:
    keys = ("group", "model", "scale", "lr", "precision", "device", "batch")
    return all(a.get(k) == b.get(k) for k in keys)


def _timing_fields(t, row: dict, rows: list[dict]) -> dict:
    """median/IQR/peak-memory fields of timing ``t`` for ``row``, with its speed-up vs the eager row of the
    same case already in ``rows`` (1.0 for the eager row itself)."""
    eager_row = next((r for r in rows if r["variant"] == "eager" and _same_case(r, row) and "median_ms" in r), None)
    ms = t.median_s * 1e3
    return {"median_ms": ms, "iqr_ms": t.iqr_s * 1e3, "n": t.n, "method": t.method,
            "peak_mem_MB": _mb(t.peak_mem_bytes), "faults_per_call": t.faults_per_call,
            "speedup_vs_eager": eager_row["median_ms"] / ms if eager_row else
            (1.0 if row["variant"] == "eager" else None)}


def _mb(n):
    return None if n is None else n / 2**20


def bench_training(device: str = "cpu", quick: bool = False, threads: int | None = None,
                   notes: list | None = None, batch: int | None = None, lr_size: int | None = None,
                   tkw: dict | None = None) -> list[dict]:
    """Training-step rows (EIMN_L x2, L1 loss, backward, Adam step): eager vs fused[backend], with peak memory.
    Default batch 4 at LR 64x64 (``--quick`` on CPU: batch 2 at 32x32)."""
    notes = notes if notes is not None else []
    backends, _ = kernel_backends(device)
    if batch is None or lr_size is None:
        batch, lr_size = (2, 32) if (quick and device == "cpu") else (4, 64)
    tkw = tkw or _timing_kw(quick, threads, device)
    precisions = ("fp32", "fp16") if device == "cuda" else ("fp32",)
    rows = []
    torch.manual_seed(1)
    x = torch.rand(batch, 3, lr_size, lr_size, device=device)
    y = torch.rand(batch, 3, 2 * lr_size, 2 * lr_size, device=device)
    cases = [(p, v) for p in precisions for v in ["eager"] + [f"fused[{b}]" for b in backends]]
    for prec, vname in progress(cases, "training step"):
        model = _seeded("EIMN_L", 2, device).train()
        if vname != "eager":
            ek.fuse(model, backend=vname[len("fused["):-1])
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device) if prec == "fp16" else None

        def step(model=model, opt=opt, scaler=scaler, prec=prec):
            opt.zero_grad(set_to_none=True)
            with _autocast(device, prec):
                loss = F.l1_loss(model(x), y)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            return loss
        row = {"group": "training", "model": "EIMN_L", "scale": 2, "lr": f"{lr_size}x{lr_size}", "batch": batch,
               "precision": prec, "variant": vname, "device": device, "step": "fwd + L1 + bwd + Adam"}
        try:
            t = measure(step, device, **tkw)
        except Exception as e:
            row["error"] = error_text(e)
            rows.append(row)
            continue
        row.update(_timing_fields(t, row, rows), mem_method=t.mem_method)
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    """Markdown table of model rows."""
    lines = ["| case | precision | variant | median ms | IQR ms | FPS | speed-up | peak MB | page faults / call "
             "| max rel err | note |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        case = (f"{r['model']} x{r['scale']} LR {r['lr']}" + (f" batch {r['batch']} train step"
                                                             if r["group"] == "training" else ""))
        if "error" in r:
            lines.append(f"| {case} | {r['precision']} | {r['variant']} | error: {r['error']} | | | | | | | |")
            continue
        note = f"published {r['published_fps']} FPS ({r['published_note']})" if "published_fps" in r else ""
        if "compile_s" in r:
            note = (note + f" compile {r['compile_s']:.0f} s").strip()
        extra = [f"paired {r['paired_vs_eager']:.2f}x eager" if "paired_vs_eager" in r else "",
                 f"{r['paired_vs_best_peer']:.2f}x {r['best_peer']}" if "paired_vs_best_peer" in r else "",
                 f"runs {r['runs_precision']}" if r.get("runs_precision") not in (None, "f32") else "",
                 f"PSNR cost {r['psnr_cost_dB']:.4f} dB (Set5)" if "psnr_cost_dB" in r else ""]
        note = "; ".join(x for x in [note, *extra] if x)

        def f(v, fmt):
            return "" if v is None else format(v, fmt)
        lines.append(f"| {case} | {r['precision']} | {r['variant']} | {r['median_ms']:.1f} | {r['iqr_ms']:.1f} "
                     f"| {1000 / r['median_ms']:.2f} | {f(r.get('speedup_vs_eager'), '.2f')} "
                     f"| {f(r.get('peak_mem_MB'), '.0f')} | {f(r.get('faults_per_call'), '.0f')} "
                     f"| {f(r.get('max_rel_err'), '.1e')} | {note} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="EIMN_L x4 only, no compile on CPU, few repeats")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=2, help="torch threads on CPU (default 2)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--no-train", action="store_true", help="skip the training-step rows")
    ap.add_argument("--cases", help="comma-separated inference cases to keep, e.g. EIMN_L_x4,EIMN_A_x4")
    ap.add_argument("--peers", action="store_true",
                    help="CPU: also ONNX Runtime and OpenVINO (f32 and its default precision) on the exported model")
    ap.add_argument("--json", metavar="FILE", help="write machine info and rows as JSON")
    add_malloc_arg(ap)
    add_record_args(ap)
    a = ap.parse_args(argv)
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    notes: list[str] = [set_malloc_mode(a.malloc)]
    rows = bench_inference(a.device, a.quick, a.threads, compile=not a.no_compile, notes=notes,
                           only=a.cases.split(",") if a.cases else None, peers=a.peers)
    if not a.no_train:
        rows += bench_training(a.device, a.quick, a.threads, notes=notes)
    res = {"machine": machine_info(a.device), "model": rows, "notes": notes, "malloc": a.malloc}
    print_result(res, format_rows(rows), a.json)
    record_run(res, a, "benchmarks.model", argv)
    return res


if __name__ == "__main__":
    main()
