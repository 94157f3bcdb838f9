"""Run every benchmark that applies to this machine; log its rows and regenerate the machine's latest table.

Sections: complexity (meta device), machine ceilings (copy bandwidth, sgemm), ops and sub-ops, whole-model
inference and a training step. Device: CUDA when available, else CPU (2 threads by default). Output: the rows go to
the results log (``benchmarks/results/history.jsonl``, see benchmarks.history) and ``latest-<machine>.md/.png``
are rewritten; with ``--out-dir DIR`` the run's whole report (JSON with notes and ceilings, markdown, PNG) also
goes to DIR as ``<machine>-<date>.*``, checkpointed after every section (for a lent GPU's ``$OUT``). A failing
section is recorded in the notes and the others still run. ``--quick`` fits in a few minutes on a 2-core CPU.

    python -m benchmarks.run [--quick] [--device cpu|cuda|all] [--threads 2] [--out-dir DIR] [--no-record]
"""
from __future__ import annotations

import argparse
import os
import time
import traceback

import torch

from . import complexity, model, ops
from .harness import add_malloc_arg, machine_info, measure_ceilings, set_malloc_mode
from .report import add_record_args, record_run, result_paths, write_all, write_json

__all__ = ["run_all", "main"]

def _section(name: str, notes: list, fn, /, *a, **kw):
    t0 = time.perf_counter()
    try:
        return fn(*a, **kw)
    except Exception as e:
        notes.append(f"section {name} failed: {type(e).__name__}: {e}")
        traceback.print_exc()
        return None
    finally:
        print(f"[{name}] {time.perf_counter() - t0:.0f} s", flush=True)


def run_all(device: str, quick: bool, threads: int, compile: bool = True, sections=("complexity", "ops", "subops",
            "model", "train"), malloc: str = "default", checkpoint_dir: str | None = None,
            omp_wait: str = "inherit", peers: bool | None = None) -> dict:
    """Run the sections on ``device`` and return the results dict (see benchmarks.report); ``malloc``: the
    allocator mode of harness.set_malloc_mode (set for the rest of the process); ``omp_wait``: the OpenMP wait
    policy of the per-shape processes of the CPU op rows (benchmarks.ops.OMP_WAIT). With ``checkpoint_dir`` the
    results so far are written there as JSON (``"partial": true``) after every section, so a run killed at a
    time limit (a lent GPU's call) keeps its finished sections. ``peers`` (default: CPU without ``quick``): the model
    rows also run ONNX Runtime and OpenVINO with paired ratios and the PSNR cost of reduced precision (benchmarks.model
    --peers)."""
    t0 = time.perf_counter()
    if device == "cpu":
        torch.set_num_threads(threads)
    notes: list[str] = [set_malloc_mode(malloc)]
    res: dict = {"quick": quick, "machine": machine_info(device), "notes": notes, "malloc": malloc}
    la = res["machine"].get("loadavg")
    if device == "cpu" and la and la[0] > (os.cpu_count() or 1):
        notes.append(f"CPU load average {la[0]:.1f} exceeds the {os.cpu_count()} CPUs: timings are noisy")
    res["ops"], res["model"] = [], []

    def checkpoint():
        if checkpoint_dir:
            write_json({**res, "partial": True, "wall_s": time.perf_counter() - t0},
                       result_paths(res, checkpoint_dir)["json"])

    res["ceilings"] = _section("ceilings", notes, measure_ceilings, device, quick, threads)
    if "complexity" in sections:
        res["complexity"] = _section("complexity", notes, complexity.complexity_table)
        checkpoint()
    if "ops" in sections:
        res["ops"] += _section("ops", notes, ops.bench_ops, ("molrcm", "sadffm"), device, quick, threads,
                               ceilings=res["ceilings"], compile=compile, notes=notes,
                               isolate=device == "cpu", omp_wait=omp_wait if device == "cpu" else "inherit") or []
        checkpoint()
    if "subops" in sections:
        res["ops"] += _section("subops", notes, ops.bench_subops, tuple(ops.SUBOPS), device, quick, threads,
                               ceilings=res["ceilings"], notes=notes) or []
        checkpoint()
    if "model" in sections:
        peers = device == "cpu" and not quick if peers is None else peers
        res["model"] += _section("model", notes, model.bench_inference, device, quick, threads, compile=compile,
                                 notes=notes, peers=peers) or []
        checkpoint()
    if "train" in sections:
        res["model"] += _section("train", notes, model.bench_training, device, quick, threads, notes=notes) or []
    res["wall_s"] = time.perf_counter() - t0
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repeats, smallest model case")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "all"),
                    help="auto: cuda when available, else cpu; all: cuda (if any) then cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for CPU timings (default 2)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--no-peers", action="store_true",
                    help="skip the ONNX Runtime / OpenVINO model rows (on by default for a full CPU run)")
    ap.add_argument("--sections", default="complexity,ops,subops,model,train",
                    help="comma-separated subset of complexity,ops,subops,model,train")
    ap.add_argument("--no-tf32", action="store_true",
                    help="CUDA: eager fp32 convolutions/matmuls without TF32 (like for like with the exact-fp32 "
                         "kernels; torch's default lets cuDNN use TF32)")
    ap.add_argument("--out-dir", help="also write the run's whole report (JSON, markdown, PNG) there")
    add_malloc_arg(ap)
    add_record_args(ap)
    ap.add_argument("--omp-wait", default="inherit", choices=ops.OMP_WAIT,
                    help="OpenMP wait policy of the CPU op rows' per-shape processes (see benchmarks.ops)")
    a = ap.parse_args(argv)
    has_cuda = torch.cuda.is_available()
    devices = {"auto": ["cuda" if has_cuda else "cpu"], "cpu": ["cpu"], "cuda": ["cuda"],
               "all": (["cuda"] if has_cuda else []) + ["cpu"]}[a.device]
    if "cuda" in devices and not has_cuda:
        ap.error("--device cuda: no CUDA device here")
    sections = tuple(s.strip() for s in a.sections.split(",") if s.strip())
    if a.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    for dev in devices:
        res = run_all(dev, a.quick, a.threads, compile=not a.no_compile, sections=sections, malloc=a.malloc,
                      checkpoint_dir=a.out_dir, omp_wait=a.omp_wait, peers=False if a.no_peers else None)
        paths = write_all(res, a.out_dir) if a.out_dir else {}
        record_run(res, a, "benchmarks.run", argv)
        out[dev] = {"results": res, "paths": paths}
        _summary(res)
        print(f"wall time {res['wall_s']:.0f} s on {dev}")
        for k, p in paths.items():
            print(f"wrote {k}: {p}")
    return out


def _summary(res: dict) -> None:
    """A few headline numbers on stdout."""
    c = res.get("ceilings") or {}
    if c:
        print(f"ceilings: copy {c['copy_GBps']:.1f} GB/s, sgemm {c['sgemm_GFLOPs']:.1f} GFLOP/s")
    for r in res.get("ops") or []:
        if r.get("group") == "op" and "median_ms" in r:
            print(f"  {r['op']:7s} {r['shape']:>13s} {r['mode']:8s} {r['variant']:14s} {r['median_ms']:9.2f} ms"
                  f"  x{r['speedup_vs_eager']:.2f}"
                  + (f" (paired x{r['paired_speedup']:.2f})" if r.get("paired_speedup") else ""))
    for r in res.get("model") or []:
        if "median_ms" in r:
            extra = f" batch {r['batch']} train" if r["group"] == "training" else ""
            print(f"  {r['model']} x{r['scale']} LR {r['lr']}{extra} {r['precision']} {r['variant']:14s} "
                  f"{r['median_ms']:9.1f} ms  x{r['speedup_vs_eager'] or 0:.2f}")
    for n in res.get("notes") or []:
        print("note:", n)


if __name__ == "__main__":
    main()
