"""Per-op benchmark: fused MOLRCM / SADFFM (every available backend) vs the eager reference and torch.compile.

For each op, shape and mode (fwd = no-grad forward, bwd = backward only, fwd+bwd) one row per variant:
``eager`` (eimn.model.MOLRCM / SADFFM), ``fused[<backend>]`` (eimn_kernels.MOLRCM / SADFFM sharing the same
parameters), ``compile`` (torch.compile of the eager module). Sub-op rows time each fused low-level op
(proj_qv, dw_mix, gate_out, gated_dwconv, dffm_out, and channel_layer_norm: EIMN's LayerNorm between blocks,
``norm``) against its function in eimn_kernels.reference.
Every row carries speed-up vs eager (same run), conv FLOPs, minimum bytes and the achieved fraction of the
machine's measured copy bandwidth and sgemm rate (see benchmarks.roofline).

    python -m benchmarks.ops molrcm|sadffm|norm|all [--quick] [--device cpu|cuda] [--threads 2]
                             [--malloc default|steady] [--no-isolate] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch

import eimn.model as em
import eimn_kernels as ek
from eimn_kernels import reference as ref

from .report import add_record_args, print_result, record_run
from .harness import (add_malloc_arg, error_text, machine_info, malloc_mode, max_rel_err, measure,
                      measure_ceilings, paired_speedup, progress, set_malloc_mode, tensor_list)
from .roofline import conv_flops, nbytes, roofline_fields

__all__ = ["shape_plan", "kernel_backends", "bench_ops", "bench_subops", "format_rows", "main"]

SUBOPS = {"molrcm": ("proj_qv", "dw_mix", "gate_out"), "sadffm": ("gated_dwconv", "dffm_out"),
          "norm": ("channel_layer_norm",)}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def shape_plan(device: str, quick: bool) -> list[tuple[tuple[int, int, int, int], tuple[str, ...]]]:
    """(input shape, modes) to run. Inference shapes time the no-grad forward; training shapes all modes."""
    modes3 = ("fwd", "bwd", "fwd+bwd")
    if device == "cuda":
        plan = [((1, 64, 180, 320), ("fwd",)), ((1, 64, 360, 640), ("fwd",)), ((16, 64, 64, 64), modes3)]
        return plan
    if quick:
        return [((1, 64, 180, 320), ("fwd",)), ((4, 64, 64, 64), modes3)]
    return [((1, 64, 180, 320), modes3), ((1, 64, 360, 640), ("fwd",)), ((4, 64, 64, 64), modes3)]


def kernel_backends(device: str) -> tuple[list[str], list[str]]:
    """(fused backends to time on ``device``, notes on the ones left out)."""
    notes, out = [], []
    for b in ek.backends.KERNEL_BACKENDS:
        ok, why = ek.backend_status(b, device)
        if ok and b == "triton" and device == "cpu":
            ok, why = False, "Triton interpreter on CPU tensors: not a meaningful timing"
        (out.append(b) if ok else notes.append(f"fused[{b}] skipped on {device}: {why}"))
    return out, notes


@dataclass
class _Case:
    fn: Callable          # fn(*inputs) -> output(s)
    inputs: list          # tensors; those requiring grad get gradients in bwd modes
    params: list          # parameters (also differentiated in bwd modes)


def _cotangents(outs) -> list:
    """Seeded random grad outputs, the same for every variant."""
    gen = torch.Generator(device=outs[0].device).manual_seed(1234)
    return [torch.randn(o.shape, generator=gen, device=o.device, dtype=o.dtype) for o in outs]


def _mode_fn(case: _Case, mode: str) -> Callable:
    """The callable to time for ``mode``: it returns the outputs (fwd) or the gradients (bwd, fwd+bwd)."""
    wrt = [t for t in case.inputs + case.params if t.requires_grad]

    def fwd():
        return case.fn(*case.inputs, *case.params)
    if mode == "fwd":
        def f():
            with torch.no_grad():
                return fwd()
        return f
    if mode == "fwd+bwd":
        gouts = []

        def f():
            outs = tensor_list(fwd())
            if not gouts:
                gouts.extend(_cotangents(outs))
            return torch.autograd.grad(outs, wrt, gouts, allow_unused=True)
        return f
    if mode == "bwd":
        outs = tensor_list(fwd())
        g = _cotangents(outs)

        def f():
            return torch.autograd.grad(outs, wrt, g, retain_graph=True, allow_unused=True)
        return f
    raise ValueError(f"unknown mode {mode!r}")


def _bytes(mode: str, case: _Case, out) -> int:
    fwd = nbytes(case.inputs, case.params, tensor_list(out))
    grads = nbytes([t for t in case.inputs + case.params if t.requires_grad])
    bwd = nbytes(tensor_list(out)) + nbytes(case.inputs, case.params) + grads
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _flops(mode: str, ref_fn: Callable, case: _Case) -> int:
    c = conv_flops(ref_fn, *case.inputs, *case.params, backward=mode != "fwd")
    return {"fwd": c["fwd"], "bwd": c.get("bwd", 0), "fwd+bwd": c["fwd"] + c.get("bwd", 0)}[mode]


def _timing_kw(quick: bool, threads: int | None, device: str = "cpu") -> dict:
    if device == "cuda":  # do_bench: min_run_time is its `rep` budget
        return dict(warmup=3, min_run_time=0.1 if quick else 0.3, min_samples=5, max_time=10.0)
    if quick:
        return dict(warmup=1, min_run_time=0.25, min_samples=3, max_time=4.0, threads=threads)
    return dict(warmup=3, min_run_time=1.0, min_samples=7, max_time=30.0, threads=threads)


def _run_group(group: str, op: str, shape, mode: str, variants: dict[str, _Case], ref_fn: Callable, device: str,
               dtype_name: str, ceilings: dict | None, tkw: dict, compile_s: dict | None = None) -> list[dict]:
    """Time every variant of one (op, shape, mode); eager first. Speed-ups and errors are vs eager
    (errors of the outputs for fwd, of all gradients for bwd / fwd+bwd)."""
    rows, want, eager_med, eager_fn = [], None, None, None
    eager = variants["eager"]
    flops = _flops(mode, ref_fn, eager)
    with torch.no_grad():
        n_bytes = _bytes(mode, eager, eager.fn(*eager.inputs, *eager.params))
    for name, case in variants.items():
        row = {"group": group, "op": op, "variant": name, "shape": "x".join(map(str, shape)), "mode": mode,
               "dtype": dtype_name, "device": device}
        try:
            fn = _mode_fn(case, mode)
            got = fn()
            if name == "eager":
                want = got
            elif want is not None:
                row["max_rel_err"] = max_rel_err(got, want)
            del got
            t = measure(fn, device, **tkw)
        except Exception as e:  # a backend that fails must not stop the run
            row["error"] = error_text(e)
            rows.append(row)
            continue
        row.update({"median_ms": t.median_s * 1e3, "iqr_ms": t.iqr_s * 1e3, "q1_ms": t.q1_s * 1e3,
                    "q3_ms": t.q3_s * 1e3, "n": t.n, "method": t.method,
                    "peak_mem_MB": None if t.peak_mem_bytes is None else t.peak_mem_bytes / 2**20,
                    "faults_per_call": t.faults_per_call})
        if compile_s and name in compile_s:
            row["compile_s"] = compile_s[name]
        if name == "eager":
            eager_med, eager_fn = t.median_s, fn
        row["speedup_vs_eager"] = eager_med / t.median_s if eager_med else None
        if name != "eager" and eager_fn is not None:
            ps = paired_speedup(eager_fn, fn, device, rounds=tkw.get("min_samples", 5) + 4,
                                max_time=tkw.get("max_time", 30.0), threads=tkw.get("threads"))
            row.update({"paired_speedup": ps["median"], "paired_q1": ps["q1"], "paired_q3": ps["q3"],
                        "paired_n": ps["n"]})
        row.update(roofline_fields(flops, n_bytes, t.median_s, ceilings))
        rows.append(row)
    return rows


def _ceilings_for(ceilings: dict | None, dtype: str) -> dict | None:
    """Ceilings with the matrix rate of ``dtype`` (hgemm for half types when measured)."""
    if ceilings and dtype in ("fp16", "bf16") and ceilings.get("hgemm_GFLOPs"):
        return dict(ceilings, gemm_GFLOPs=ceilings["hgemm_GFLOPs"])
    return ceilings


def _modules(op: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Eager reference module with seeded random weights (non-trivial biases and norm parameters)."""
    torch.manual_seed(0)
    m = {"molrcm": em.MOLRCM, "sadffm": em.SADFFM, "norm": torch.nn.LayerNorm}[op](64).to(device, dtype)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight") or op == "norm" and name == "weight":
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.uniform_(-0.2, 0.2)
    return m


def _module_fn(m: torch.nn.Module) -> Callable:
    names = [n for n, _ in m.named_parameters()]

    def f(x, *params):
        return torch.func.functional_call(m, dict(zip(names, params)), (x,))
    return f


ISOLATE_NOTE = ("ops: each (op, shape) timed in a fresh process (isolate), so no row depends on what the "
                "process timed before")
OMP_WAIT = ("inherit", "passive", "active", "default")


def _omp_note(omp_wait: str) -> str:
    pol = os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default)") if omp_wait == "inherit" else omp_wait
    return (f"ops: OpenMP wait policy of the timed processes: {pol} (--omp-wait); eager PyTorch runs many short "
            "parallel regions and is sensitive to it (SADFFM 4x64x64x64 eager fwd 17-21 ms passive, 14-16 ms "
            "with libgomp's default on the 2-core Xeon), the fused ops much less")


def _isolated_group(op: str, shape, modes, device: str, quick: bool, threads: int | None, dtype: str,
                    ceilings: dict | None, compile: bool, tkw: dict | None,
                    omp_wait: str = "inherit") -> tuple[list[dict], list[str]]:
    """bench_ops for one (op, shape) in a child process (same allocator mode and threads; OpenMP wait policy:
    inherited, or OMP_WAIT_POLICY=PASSIVE / ACTIVE, or unset for libgomp's default): (rows, notes)."""
    spec = {"op": op, "shape": list(shape), "modes": list(modes), "device": device, "quick": quick,
            "threads": threads, "dtype": dtype, "ceilings": ceilings, "compile": compile, "tkw": tkw,
            "malloc": malloc_mode()}
    with tempfile.TemporaryDirectory() as d:
        spec_path, out_path = os.path.join(d, "spec.json"), os.path.join(d, "rows.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        if omp_wait in ("passive", "active"):
            env["OMP_WAIT_POLICY"] = omp_wait.upper()
        elif omp_wait == "default":
            env.pop("OMP_WAIT_POLICY", None)
            env["EIMN_BENCH_OMP_DEFAULT"] = "1"  # benchmarks/__init__ leaves the policy unset
        cmd = [sys.executable, "-c", "import sys; from benchmarks.ops import _group_worker; "
               "_group_worker(sys.argv[1], sys.argv[2])", spec_path, out_path]
        r = subprocess.run(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"isolated benchmark of {op} {shape} failed (exit {r.returncode}): "
                               f"{r.stderr.strip()[-800:]}")
        with open(out_path) as f:
            out = json.load(f)
    return out["rows"], out["notes"]


def _group_worker(spec_path: str, out_path: str) -> None:
    """Child process of :func:`_isolated_group`: runs the spec's group, writes {"rows", "notes"} as JSON."""
    with open(spec_path) as f:
        s = json.load(f)
    set_malloc_mode(s["malloc"])
    if s["device"] == "cpu" and s["threads"]:
        torch.set_num_threads(s["threads"])
    notes: list[str] = []
    rows = bench_ops((s["op"],), s["device"], s["quick"], s["threads"], s["dtype"], s["ceilings"],
                     compile=s["compile"], notes=notes, plan=[(tuple(s["shape"]), tuple(s["modes"]))],
                     tkw=s["tkw"], show_progress=False)
    policy = os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default)")
    for r in rows:
        r["omp_wait_policy"] = policy
    with open(out_path, "w") as f:
        json.dump({"rows": rows, "notes": notes}, f)


def bench_ops(ops=("molrcm", "sadffm"), device: str = "cpu", quick: bool = False, threads: int | None = None,
              dtype: str = "fp32", ceilings: dict | None = None, compile: bool = True,
              notes: list | None = None, plan: list | None = None, tkw: dict | None = None,
              isolate: bool = False, show_progress: bool = True, omp_wait: str = "inherit") -> list[dict]:
    """Whole-op rows (eager, fused[backend], compile) for every shape and mode of ``plan``
    (default :func:`shape_plan`); ``tkw`` overrides the timing arguments of :func:`harness.time_fn`.
    isolate: each (op, shape) group runs in its own child process (same allocator mode and threads), so no row
    depends on what the process timed before; omp_wait (isolate only): the children's OpenMP wait policy
    (OMP_WAIT)."""
    notes = notes if notes is not None else []
    if omp_wait not in OMP_WAIT:
        raise ValueError(f"omp_wait must be one of {OMP_WAIT}, got {omp_wait!r}")
    if omp_wait != "inherit" and not isolate:
        raise ValueError("omp_wait needs isolate=True: libgomp reads the policy once, when torch loads it")
    if isolate:
        for n in (ISOLATE_NOTE, _omp_note(omp_wait)):
            if n not in notes:
                notes.append(n)
        rows = []
        groups = [(op, shape, modes) for op in ops for shape, modes in (plan or shape_plan(device, quick))]
        for op, shape, modes in progress(groups, "ops (isolated)"):
            r, n = _isolated_group(op, shape, modes, device, quick, threads, dtype, ceilings, compile, tkw,
                                   omp_wait)
            rows += r
            notes.extend(x for x in n if x not in notes)
        return rows
    backends, skipped = kernel_backends(device)
    notes.extend(n for n in skipped if n not in notes)
    if not backends and "no fused backend available: fused rows skipped" not in notes:
        notes.append("no fused backend available: fused rows skipped")
    dt = DTYPES[dtype]
    ceilings = _ceilings_for(ceilings, dtype)
    tkw = tkw or _timing_kw(quick, threads, device)
    rows = []
    cases = [(op, shape, mode) for op in ops for shape, modes in (plan or shape_plan(device, quick)) for mode in modes]
    for op, shape, mode in progress(cases, "ops", disable=not show_progress):
        m = _modules(op, device, dt)
        x = torch.randn(shape, device=device, dtype=dt, requires_grad=mode != "fwd")
        params = list(m.parameters())
        ref_fn = _module_fn(m)
        variants = {"eager": _Case(lambda x, *p, m=m: m(x), [x], params)}
        for b in backends:
            fm = (ek.MOLRCM if op == "molrcm" else ek.SADFFM).from_module(m, backend=b)
            variants[f"fused[{b}]"] = _Case(lambda x, *p, fm=fm: fm(x), [x], params)
        compile_s = {}
        if compile and quick and (mode != "fwd" or shape != cases[0][1]):
            n = "ops: torch.compile rows only for the first shape's fwd in --quick (a compile takes tens of seconds)"
            if n not in notes:
                notes.append(n)
        elif compile:
            try:
                torch._dynamo.reset()  # fresh guards: no silent fallback to eager after the recompile limit
                cm = torch.compile(m, dynamic=False)
                case = _Case(lambda x, *p, cm=cm: cm(x), [x], params)
                t0 = time.perf_counter()
                _mode_fn(case, mode)()
                compile_s["compile"] = time.perf_counter() - t0
                variants["compile"] = case
            except Exception as e:
                notes.append(f"torch.compile failed for {op} {mode}: {type(e).__name__}: {str(e)[:150]}")
        rows += _run_group("op", op, shape, mode, variants, ref_fn, device, dtype, ceilings, tkw, compile_s)
    return rows


def _subop_case(name: str, m: torch.nn.Module, shape, device, dt, grad: bool):
    """(reference fn, fused fn(backend), inputs, params) for sub-op ``name`` with the parameters of ``m``."""
    n, c, h, w = shape

    def rnd(ch):
        return torch.randn(n, ch, h, w, device=device, dtype=dt, requires_grad=grad)
    if name == "proj_qv":
        p = [m.proj_query[0].weight, m.proj_query[0].bias, m.proj_value[0].weight, m.proj_value[0].bias]
        return ref.proj_qv, lambda b: (lambda *a: ek.proj_qv(*a, backend=b)), [rnd(c)], p
    if name == "dw_mix":
        c1, c2, _ = m.split
        p = [m.region.weight, m.region.bias, m.spatial_1.weight, m.spatial_1.bias, m.spatial_2.weight,
             m.spatial_2.bias]
        return ((lambda q, *p: ref.dw_mix(q, *p, c1, c2, 1, 2, 3)),
                lambda b: (lambda q, *p: ek.dw_mix(q, *p, c1, c2, 1, 2, 3, backend=b)), [rnd(c)], p)
    if name == "gate_out":
        p = [m.fusion.weight, m.fusion.bias, m.out.weight, m.out.bias]
        return ref.gate_out, lambda b: (lambda *a: ek.gate_out(*a, backend=b)), [rnd(c), rnd(c)], p
    if name == "gated_dwconv":
        p = [m.linear_in.weight, m.linear_in.bias, m.SAL.weight, m.SAL.bias]
        return ref.gated_dwconv, lambda b: (lambda *a: ek.gated_dwconv(*a, backend=b)), [rnd(c)], p
    if name == "dffm_out":
        d = m.DFFM
        p = [m.linear_out.weight, m.linear_out.bias, d.norm.weight, d.norm.bias, d.global_reduce.weight,
             d.global_reduce.bias, d.local_reduce.weight, d.local_reduce.bias, d.channel_expand.weight,
             d.channel_expand.bias, d.spatial_expand.weight, d.spatial_expand.bias]
        eps = d.norm.eps
        return ((lambda *a: ref.dffm_out(*a, eps)), lambda b: (lambda *a: ek.dffm_out(*a, eps, backend=b)),
                [rnd(m.hidden)], p)
    if name == "channel_layer_norm":  # m: the nn.LayerNorm(C) EIMN applies to the channels of NCHW features
        return ((lambda x, w, b: ref.channel_layer_norm(x, w, b, m.eps)),
                lambda b: (lambda x, w, bb: ek.channel_layer_norm(x, w, bb, m.eps, backend=b)), [rnd(c)],
                [m.weight, m.bias])
    raise ValueError(f"unknown sub-op {name!r}")


def bench_subops(ops=("molrcm", "sadffm"), device: str = "cpu", quick: bool = False, threads: int | None = None,
                 dtype: str = "fp32", ceilings: dict | None = None, notes: list | None = None,
                 plan: list | None = None, tkw: dict | None = None) -> list[dict]:
    """Sub-op rows: each fused low-level op per backend vs its eimn_kernels.reference function."""
    backends, _ = kernel_backends(device)
    dt = DTYPES[dtype]
    ceilings = _ceilings_for(ceilings, dtype)
    tkw = tkw or _timing_kw(quick, threads, device)
    given = plan is not None
    plan = plan or shape_plan(device, quick)
    if quick and not given:  # first inference shape (fwd) and the training shape (fwd+bwd) only
        plan = [(plan[0][0], ("fwd",)), (plan[-1][0], ("fwd+bwd",))]
    cases = [(op, s, shape, mode) for op in ops for s in SUBOPS[op] for shape, modes in plan for mode in modes]
    rows = []
    for op, sub, shape, mode in progress(cases, "sub-ops"):
        m = _modules(op, device, dt)
        ref_fn, fused, inputs, params = _subop_case(sub, m, shape, device, dt, grad=mode != "fwd")
        variants = {"eager": _Case(ref_fn, inputs, params)}
        for b in backends:
            variants[f"fused[{b}]"] = _Case(fused(b), inputs, params)
        rows += _run_group("subop", sub, shape, mode, variants, ref_fn, device, dtype, ceilings, tkw)
    return rows


def _paired(r: dict) -> str:
    if r.get("paired_speedup") is None:
        return ""
    return f"{r['paired_speedup']:.2f} ({r['paired_q1']:.2f}-{r['paired_q3']:.2f})"


def format_rows(rows: list[dict]) -> str:
    """Markdown table of op / sub-op rows."""
    lines = ["| op | shape | mode | variant | median ms | IQR ms | speed-up | paired speed-up (IQR) | peak MB "
             "| page faults / call | GFLOP/s | GB/s | % BW | % FLOP | max rel err |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v, fmt):
        return "" if v is None else format(v, fmt)
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['shape']} | {r['mode']} | {r['variant']} | error: {r['error']} "
                         "| | | | | | | | | | |")
            continue
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['mode']} | {r['variant']} | {r['median_ms']:.2f} | {r['iqr_ms']:.2f} "
            f"| {f(r.get('speedup_vs_eager'), '.2f')} | {_paired(r)} | {f(r.get('peak_mem_MB'), '.0f')} "
            f"| {f(r.get('faults_per_call'), '.0f')} | {r['GFLOPs']:.1f} "
            f"| {r['GBps']:.1f} | {f(r.get('bw_frac') and 100 * r['bw_frac'], '.0f')} "
            f"| {f(r.get('flop_frac') and 100 * r['flop_frac'], '.0f')} | {f(r.get('max_rel_err'), '.1e')} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=("molrcm", "sadffm", "norm", "all"),
                    help="norm: channel_layer_norm sub-op rows only (no whole-layer module)")
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=2, help="torch threads on CPU (default 2)")
    ap.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--no-subops", action="store_true", help="skip the per-sub-op rows")
    ap.add_argument("--json", metavar="FILE", help="write machine info, ceilings and rows as JSON")
    ap.add_argument("--no-isolate", action="store_true",
                    help="time every op shape in this process (default on CPU: one fresh process per op and shape)")
    ap.add_argument("--omp-wait", default="inherit", choices=OMP_WAIT,
                    help="OpenMP wait policy of the per-shape processes: inherit (benchmarks sets PASSIVE unless "
                         "OMP_WAIT_POLICY is set), passive, active, or default (unset: libgomp's own, spin then "
                         "sleep; eager's fastest on an idle machine, harmful on an oversubscribed one)")
    add_malloc_arg(ap)
    add_record_args(ap)
    a = ap.parse_args(argv)
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    ops = tuple(SUBOPS) if a.which == "all" else (a.which,)
    layers = tuple(o for o in ops if o != "norm")  # ops with a whole-layer module
    notes: list[str] = [set_malloc_mode(a.malloc)]
    ceilings = measure_ceilings(a.device, quick=a.quick, threads=a.threads)
    rows = bench_ops(layers, a.device, a.quick, a.threads, a.dtype, ceilings, compile=not a.no_compile,
                     notes=notes, isolate=a.device == "cpu" and not a.no_isolate, omp_wait=a.omp_wait) if layers else []
    if not a.no_subops or not layers:
        rows += bench_subops(ops, a.device, a.quick, a.threads, a.dtype, ceilings, notes=notes)
    res = {"machine": machine_info(a.device), "ceilings": ceilings, "ops": rows, "notes": notes, "malloc": a.malloc}
    print(f"ceilings: copy {ceilings['copy_GBps']:.1f} GB/s, sgemm {ceilings['sgemm_GFLOPs']:.1f} GFLOP/s")
    print_result(res, format_rows(rows), a.json)
    record_run(res, a, "benchmarks.ops", argv)
    return res


if __name__ == "__main__":
    main()
