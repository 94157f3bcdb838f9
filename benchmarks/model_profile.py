"""Where the folded model's time goes: a per-layer profile of EIMN inference on the CPU at a 720p output.

The model is ``optimize_for_inference`` of EIMN_A / EIMN_L (seeded weights; speed does not depend on them), fp32
or with bf16 GEMMs (``--precision bf16``, CPUs with AVX512-BF16). Each forward is timed whole and every layer by
forward hooks (the CPU ops are synchronous, so a layer's time is the wall time between its pre- and post-hook);
the forward with the median wall time is broken down. Rows, one per group, largest first:

- ``MOLRCM``, ``SADFFM``: the fused layers (all blocks together), ``LayerNorm``: the channel LayerNorms between
  blocks where they run on their own (the CPU fold applies them, the blocks' second residual and ls2 in the SADFFM
  kernel's last pass: then they are in SADFFM's row and this one is 0), ``head conv`` / ``tail conv``: the 3x3
  convolutions (the CPU fold's C++ passes: the head as im2col + GEMM, the tail with the pixel shuffle, whose own
  row is then 0), ``pixel shuffle``;
- ``residual and glue``: the rest of the forward, the blocks' residual sums and the Python between layers
  (wall time minus the groups').

Columns: ms in that forward, share of its wall time, GFLOP (2 x the conv
multiply-adds of the layers in the group, counted on the eager model as benchmarks.complexity counts) and the rate
achieved as a fraction of this machine's sgemm rate (benchmarks.harness.measure_ceilings, same threads).

    python -m benchmarks.model_profile [--cases EIMN_A_x4,EIMN_L_x3] [--threads 2] [--iters 5] [--precision fp32|bf16]
        [--json FILE]
"""
from __future__ import annotations

import argparse
import datetime
import json
import time

import torch
import torch.nn as nn

import eimn_kernels as ek
from eimn.model import EIMN_A, EIMN_L

from .complexity import LR_SIZES
from .harness import _threads, machine_info, measure_ceilings, progress
from .history import git_commit
from .roofline import _conv_macs

__all__ = ["GROUPS", "layer_group", "conv_gflop_by_group", "profile_model", "format_profile", "main"]

GROUPS = ("MOLRCM", "SADFFM", "LayerNorm", "head conv", "tail conv", "pixel shuffle")
_BUILD = {"EIMN_L": EIMN_L, "EIMN_A": EIMN_A}


def layer_group(name: str, module: nn.Module) -> str | None:
    """The profile group of one module of an EIMN model (eager or folded) by its qualified name and type, or None
    for modules inside a group or outside every group."""
    if isinstance(module, nn.PixelShuffle):
        return "pixel shuffle"
    if name in ("head.0", "tail.0") and isinstance(module, nn.Conv2d):
        return "head conv" if name == "head.0" else "tail conv"
    kind = type(module).__name__
    last = name.rsplit(".", 1)[-1]
    if last == "attn" and kind == "MOLRCM":
        return "MOLRCM"
    if last == "mlp" and kind == "SADFFM":
        return "SADFFM"
    if last.startswith("norm") and kind in ("LayerNorm", "ChannelLayerNorm") and "." not in name:
        return "LayerNorm"
    return None


def conv_gflop_by_group(variant: str, scale: int, lr: tuple[int, int]) -> dict[str, float]:
    """2 x conv multiply-adds (GFLOP) per group of the eager model at input (1, 3, *lr), counted on the meta device."""
    model = _BUILD[variant](scale=scale).to("meta")
    owner = {}
    for gname, gmod in model.named_modules():
        g = layer_group(gname, gmod)
        if g is not None:
            for sub in gmod.modules():
                owner[sub] = g
    flop = dict.fromkeys(GROUPS, 0.0)

    def hook(mod, inp, out):
        g = owner.get(mod)
        if g is not None:
            flop[g] += 2.0 * _conv_macs(out.shape, mod.weight) / 1e9

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.empty(1, 3, *lr, device="meta"))
    for h in hs:
        h.remove()
    return flop


def _timed_forward(model: nn.Module, x: torch.Tensor) -> tuple[float, dict[str, float]]:
    """Wall seconds of one forward and the seconds spent in the layers of each group (forward hooks on every
    group's layers: a few microseconds per layer)."""
    spent, start = dict.fromkeys(GROUPS, 0.0), {}

    def pre(mod, inp):
        start[mod] = time.perf_counter()

    def post(mod, inp, out, group):
        spent[group] += time.perf_counter() - start.pop(mod)

    hs = []
    for name, mod in model.named_modules():
        g = layer_group(name, mod)
        if g is not None:
            hs += [mod.register_forward_pre_hook(pre),
                   mod.register_forward_hook(lambda m, i, o, g=g: post(m, i, o, g))]
    try:
        with torch.no_grad():
            t0 = time.perf_counter()
            model(x)
            wall = time.perf_counter() - t0
    finally:
        for h in hs:
            h.remove()
    return wall, spent


def profile_model(variant: str, scale: int, threads: int | None = 2, iters: int = 5, precision: str = "fp32",
                  sgemm_gflops: float | None = None, progress_bar: bool = True,
                  lr: tuple[int, int] | None = None) -> dict:
    """Profile of the folded ``variant`` x``scale`` at a 720p output (LR input (H, W) from benchmarks.complexity, or
    ``lr``): of ``iters`` timed forwards, the one with the median wall time, broken down by group.

    Returns {'case', 'precision', 'threads', 'wall_ms', 'sgemm_GFLOPs', 'rows': [{'group', 'ms', 'share',
    'GFLOP', 'of_sgemm'}]}; the rows' ms add up to wall_ms (the 'residual and glue' row is the remainder)."""
    lr = lr or LR_SIZES[scale]
    torch.manual_seed(0)
    eager = _BUILD[variant](scale=scale).eval()
    model = ek.optimize_for_inference(eager, precision=precision)
    x = torch.rand(1, 3, *lr)
    flop = conv_gflop_by_group(variant, scale, lr)
    with _threads(threads):
        if sgemm_gflops is None:
            sgemm_gflops = measure_ceilings("cpu", quick=True, threads=threads)["sgemm_GFLOPs"]
        with torch.no_grad():
            model(x)  # warm-up: caches, packed weights, pages
        runs = [_timed_forward(model, x) for _ in progress(range(iters), f"profile {variant}_x{scale}",
                                                            disable=not progress_bar)]
    wall, spent = sorted(runs, key=lambda r: r[0])[(len(runs) - 1) // 2]
    rows = []
    for g in GROUPS:
        s = spent[g]
        rows.append({"group": g, "ms": 1e3 * s, "share": s / wall, "GFLOP": flop[g],
                     "of_sgemm": (flop[g] / s / sgemm_gflops) if flop[g] and s else None})
    rest = wall - sum(spent.values())
    rows.append({"group": "residual and glue", "ms": 1e3 * rest, "share": rest / wall, "GFLOP": 0.0,
                 "of_sgemm": None})
    rows.sort(key=lambda r: -r["ms"])
    total = sum(flop.values())
    return {"case": f"{variant}_x{scale}", "lr": f"{lr[1]}x{lr[0]}", "precision": precision, "threads": threads,
            "wall_ms": 1e3 * wall, "GFLOP": total, "of_sgemm": total / wall / sgemm_gflops,
            "sgemm_GFLOPs": sgemm_gflops, "rows": rows}


def format_profile(p: dict) -> str:
    """Markdown table of one profile_model result."""
    lines = [f"{p['case']} LR {p['lr']}, folded, {p['precision']}, {p['threads']} threads: {p['wall_ms']:.0f} ms, "
             f"{p['GFLOP']:.1f} GFLOP, {100 * p['of_sgemm']:.0f}% of sgemm ({p['sgemm_GFLOPs']:.0f} GFLOP/s)", "",
             "| group | ms | share | GFLOP | of sgemm |", "|---|---:|---:|---:|---:|"]
    for r in p["rows"]:
        rate = f"{100 * r['of_sgemm']:.0f}%" if r["of_sgemm"] else ""
        lines.append(f"| {r['group']} | {r['ms']:.1f} | {100 * r['share']:.1f}% | {r['GFLOP']:.2f} | {rate} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="EIMN_A_x4", help="comma-separated <variant>_x<scale> (EIMN_A_x4,EIMN_L_x3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--json", help="also write the results (with the machine) to this file")
    a = ap.parse_args(argv)
    out = []
    sgemm = None
    for case in a.cases.split(","):
        variant, _, s = case.partition("_x")
        if variant not in _BUILD or s not in ("2", "3", "4"):
            ap.error(f"--cases: {case!r} is not <EIMN_A|EIMN_L>_x<2|3|4>")
        p = profile_model(variant, int(s), a.threads, a.iters, a.precision, sgemm_gflops=sgemm)
        sgemm = p["sgemm_GFLOPs"]
        print(format_profile(p) + "\n")
        out.append(p)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine_info("cpu"), "date": datetime.datetime.now().isoformat(timespec="minutes"),
                       "commit": git_commit(), "command": "python -m benchmarks.model_profile "
                       + " ".join(argv if argv is not None else __import__("sys").argv[1:]), "profiles": out}, f,
                      indent=1)
    return out


if __name__ == "__main__":
    main()
