"""VAN (Visual Attention Network, Guo et al. 2022) benchmark: the large-kernel-attention family through ek.fuse.

The network is written here from the paper's description (VAN-B0: widths 32/64/160/256, depths 3/3/5/2, MLP
ratios 8/8/4/4; overlapping patch embeddings 7x7/4 then 3x3/2 with BatchNorm; blocks of BatchNorm -> attention
(proj_1, GELU, LKA: depthwise 5x5, depthwise 7x7 dilation 3, 1x1, product; proj_2, residual) and BatchNorm -> MLP
(1x1, depthwise 3x3, GELU, 1x1) with layer scales; a LayerNorm per stage, mean pooling, a linear head). Weights are
seeded random (speed does not depend on them); fused outputs are checked against eager.

Rows: inference (batch 1 and 8, 224x224) for eager, fused (``ek.fuse``), folded (``ek.optimize_for_inference``:
BatchNorms and layer scales folded into the 1x1s, both residuals in their epilogues) and torch.compile of eager,
with paired, interleaved ratios over eager and (folded) over torch.compile; a training step (batch 8,
cross-entropy, backward, SGD) for eager and fused; per layer, the attention block alone at each stage's input
shape (paired ratio over eager). Logged to the results log (benchmarks.history).

    python -m benchmarks.van [--threads 2] [--quick] [--no-compile] [--no-record] [--json FILE]
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

import eimn_kernels as ek

from .harness import add_paired_ratios, error_text, machine_info, max_rel_err, measure, paired_speedup, progress
from .report import add_record_args, print_result, record_run

__all__ = ["LKA", "Attention", "Block", "VAN", "van_b0", "bench", "main"]


class LKA(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, padding=9, groups=dim, dilation=3)
        self.conv1 = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        return x * self.conv1(self.conv_spatial(self.conv0(x)))


class Attention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = LKA(dim)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        return self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x)))) + x


class Block(nn.Module):
    def __init__(self, dim: int, mlp_ratio: int):
        super().__init__()
        self.norm1, self.norm2 = nn.BatchNorm2d(dim), nn.BatchNorm2d(dim)
        self.attn = Attention(dim)
        hid = dim * mlp_ratio
        self.mlp = nn.Sequential(nn.Conv2d(dim, hid, 1), nn.Conv2d(hid, hid, 3, padding=1, groups=hid), nn.GELU(),
                                 nn.Conv2d(hid, dim, 1))
        self.layer_scale_1 = nn.Parameter(1e-2 * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(1e-2 * torch.ones(dim))

    def forward(self, x):
        x = x + self.layer_scale_1[:, None, None] * self.attn(self.norm1(x))
        return x + self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x))


class VAN(nn.Module):
    """img: (N, 3, H, W) -> logits (N, classes)."""

    def __init__(self, widths=(32, 64, 160, 256), depths=(3, 3, 5, 2), mlp_ratios=(8, 8, 4, 4), classes=1000):
        super().__init__()
        self.stages = nn.ModuleList()
        cin = 3
        for i, (w, d, r) in enumerate(zip(widths, depths, mlp_ratios)):
            k, s = (7, 4) if i == 0 else (3, 2)
            embed = nn.Sequential(nn.Conv2d(cin, w, k, stride=s, padding=k // 2), nn.BatchNorm2d(w))
            self.stages.append(nn.ModuleDict({"embed": embed, "blocks": nn.Sequential(*[Block(w, r) for _ in
                                                                                         range(d)]),
                                              "norm": nn.LayerNorm(w)}))
            cin = w
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        for st in self.stages:
            x = st["blocks"](st["embed"](x))
            x = st["norm"](x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(x.mean(dim=(2, 3)))


def van_b0() -> VAN:
    """VAN-B0 with seeded weights and perturbed BatchNorm statistics."""
    torch.manual_seed(0)
    m = VAN()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def _tkw(quick: bool, threads: int) -> dict:
    return dict(warmup=1, min_run_time=0.3 if quick else 1.0, min_samples=3, max_time=10.0 if quick else 40.0,
                threads=threads)


def _timed(row: dict, fn, tkw: dict) -> dict:
    """``row`` with fn's median / quartiles (ms) and method, or the error that stopped it."""
    try:
        t = measure(fn, "cpu", memory=False, **tkw)
        row.update(median_ms=t.median_s * 1e3, iqr_ms=t.iqr_s * 1e3, q1_ms=t.q1_s * 1e3, q3_ms=t.q3_s * 1e3, n=t.n,
                   method=t.method)
    except Exception as e:  # record and go on
        row["error"] = error_text(e)
    return row


def bench(threads: int = 2, quick: bool = False, compile: bool = True, notes: list | None = None) -> tuple:
    """(op rows, model rows) of the VAN benchmark on CPU."""
    notes = notes if notes is not None else []
    torch.set_num_threads(threads)
    tkw = _tkw(quick, threads)
    eager = van_b0().eval()
    fused = ek.fuse(copy.deepcopy(eager))
    folded = ek.optimize_for_inference(eager)  # BN and layer scales folded, fused layers
    variants = {"eager": eager, "fused[cpu]": fused, "folded[cpu]": folded}
    if compile:
        torch._dynamo.reset()
        variants["compile"] = torch.compile(eager, dynamic=False)
    model_rows = []
    for batch in (1,) if quick else (1, 8):
        x = torch.rand(batch, 3, 224, 224)
        with torch.no_grad():
            want = eager(x)
        fns, batch_rows = {}, []
        for vname, m in progress(list(variants.items()), f"VAN-B0 batch {batch}"):
            row = {"group": "inference", "model": "VAN-B0", "scale": 1, "lr": "224x224", "batch": batch,
                   "precision": "fp32", "variant": vname, "device": "cpu"}

            def fn(m=m):
                with torch.no_grad():
                    return m(x)
            row["max_rel_err"] = max_rel_err(fn(), want)
            if "median_ms" in _timed(row, fn, tkw):
                fns[vname] = fn
            batch_rows.append(row)
        # paired ratios of the timed rows over eager, and the folded one's over torch.compile (the fastest peer)
        add_paired_ratios(batch_rows, fns, "compile" if "compile" in fns else None, rounds=5 if quick else 9,
                          threads=threads)
        model_rows += batch_rows
    # training step, eager vs fused
    tb = 2 if quick else 8
    x, y = torch.rand(tb, 3, 224, 224), torch.randint(0, 1000, (tb,))
    for vname in ("eager", "fused[cpu]"):
        m = van_b0().train()
        if vname != "eager":
            ek.fuse(m)
        opt = torch.optim.SGD(m.parameters(), lr=1e-3)

        def step(m=m, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            return loss
        row = {"group": "training", "model": "VAN-B0", "scale": 1, "lr": "224x224", "batch": tb, "precision": "fp32",
               "variant": vname, "device": "cpu"}
        model_rows.append(_timed(row, step, tkw))
    for r in model_rows:
        base = next((b for b in model_rows if b["variant"] == "eager" and b["group"] == r["group"]
                     and b.get("batch") == r.get("batch") and "median_ms" in b), None)
        if base and "median_ms" in r:
            r["speedup_vs_eager"] = base["median_ms"] / r["median_ms"]
    # the attention block alone at each stage's input shape
    op_rows = []
    for i, st in enumerate(eager.stages):
        blk = st["blocks"][0].attn
        dim, hw = blk.proj_1.in_channels, 224 // (4 * 2 ** i)
        xa = torch.rand(1, dim, hw, hw)
        fa = ek.LKAAttention.from_module(copy.deepcopy(blk)).eval()
        shape = f"1x{dim}x{hw}x{hw}"
        with torch.no_grad():
            for vname, m in (("eager", blk), ("fused[cpu]", fa)):
                row = {"group": "op", "op": "lka_attention", "shape": shape, "mode": "fwd", "dtype": "fp32",
                       "variant": vname, "device": "cpu"}
                op_rows.append(_timed(row, lambda m=m: m(xa), tkw))
            op_rows[-1]["max_rel_err"] = max_rel_err(fa(xa), blk(xa))
            op_rows[-1]["speedup_vs_eager"] = op_rows[-2]["median_ms"] / op_rows[-1]["median_ms"]
            op_rows[-2]["speedup_vs_eager"] = 1.0
            p = paired_speedup(lambda: blk(xa), lambda: fa(xa), "cpu", rounds=9 if quick else 15, threads=threads)
            op_rows[-1].update(paired_speedup=p["median"], paired_q1=p["q1"], paired_q3=p["q3"], paired_n=p["n"])
    return op_rows, model_rows


def format_rows(op_rows: list[dict], model_rows: list[dict]) -> str:
    lines = ["| case | variant | median ms | vs eager | paired | max rel err |", "|---|---|---:|---:|---:|---:|"]

    def paired(r: dict) -> str:
        return (f"{r['paired_vs_eager']:.2f}x" if "paired_vs_eager" in r else "") + (
            f", {r['paired_vs_best_peer']:.2f}x vs {r['best_peer']}" if "paired_vs_best_peer" in r else "")
    for r in op_rows:
        lines.append(f"| LKA attention {r['shape']} | {r['variant']} | {r['median_ms']:.2f} "
                     f"| {r.get('speedup_vs_eager', 0):.2f}x | {r.get('paired_speedup') or 0:.2f}x "
                     f"| {r.get('max_rel_err', 0):.1e} |")
    for r in model_rows:
        case = f"VAN-B0 {r['group']} batch {r['batch']}"
        if "error" in r:
            lines.append(f"| {case} | {r['variant']} | error: {r['error']} | | | |")
            continue
        lines.append(f"| {case} | {r['variant']} | {r['median_ms']:.1f} | {r.get('speedup_vs_eager', 0):.2f}x "
                     f"| {paired(r)} | {r.get('max_rel_err', 0):.1e} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="batch 1 only, shorter timings")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    add_record_args(ap)
    a = ap.parse_args(argv)
    notes: list[str] = []
    op_rows, model_rows = bench(a.threads, a.quick, not a.no_compile, notes)
    res = {"machine": machine_info("cpu"), "ops": op_rows, "model": model_rows, "notes": notes}
    print_result(res, format_rows(op_rows, model_rows), a.json)
    record_run(res, a, "benchmarks.van", argv)
    return res


if __name__ == "__main__":
    main()
