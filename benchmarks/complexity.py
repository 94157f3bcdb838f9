"""Params and Multi-Adds of EIMN_L / EIMN_A, counted from the model the way the paper's authors count.

Count (SPEC.md "Complexity"): multiply-accumulates of every nn.Conv2d (output elements x Cin/groups x kh x kw,
bias not counted) plus 2 per element of every nn.BatchNorm2d; LayerNorm, pooling, activations, products and
pixel shuffle are not counted. The model runs on the meta device at the real LR size (no arithmetic is done),
with forward hooks reading the shapes. Multi-Adds are for a 1280x720 HR output.

    python -m benchmarks.complexity [--json FILE]
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn as nn

from eimn.model import EIMN_A, EIMN_L

__all__ = ["HR_SIZE", "LR_SIZES", "PAPER", "count_complexity", "complexity_table", "format_table", "main"]

HR_SIZE = (720, 1280)  # (H, W) of the HR output
# LR input (H, W) per scale: 1280x720 / s, rounded down as the authors do (426x240 at x3).
LR_SIZES = {2: (360, 640), 3: (240, 426), 4: (180, 320)}
# Paper's Table 1 (README of the official repository): params (K) and Multi-Adds (G) as printed there.
PAPER = {
    ("EIMN_L", 2): (981, 212.7), ("EIMN_L", 3): (990, 95.2), ("EIMN_L", 4): (1002, 54.37),
    ("EIMN_A", 2): (860, 186.3), ("EIMN_A", 3): (868, 83.58), ("EIMN_A", 4): (880, 47.78),
}
_BUILDERS = {"EIMN_L": EIMN_L, "EIMN_A": EIMN_A}


def count_complexity(model: nn.Module, input_shape: tuple[int, int, int, int]) -> dict:
    """Count ``model`` on an input of ``input_shape`` (N, C, H, W) without computing anything.

    Returns {'params', 'conv_macs', 'bn_ops', 'multi_adds'} (ints): params = number of parameter
    elements; conv_macs = sum over Conv2d of out.numel() * Cin/groups * kh * kw; bn_ops = 2 * input
    elements of every BatchNorm2d; multi_adds = conv_macs + bn_ops. The model is moved to the meta device
    (a copy is not made: pass a throwaway model, or one already on meta).
    """
    params = sum(p.numel() for p in model.parameters())
    model = model.to("meta")
    totals = {"conv_macs": 0, "bn_ops": 0}

    def conv_hook(m: nn.Conv2d, inp, out):
        kh, kw = m.kernel_size
        totals["conv_macs"] += out.numel() * (m.in_channels // m.groups) * kh * kw

    def bn_hook(m: nn.BatchNorm2d, inp, out):
        totals["bn_ops"] += 2 * inp[0].numel()

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.BatchNorm2d):
            handles.append(m.register_forward_hook(bn_hook))
    try:
        with torch.no_grad():
            model.eval()(torch.empty(input_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return {"params": params, **totals, "multi_adds": totals["conv_macs"] + totals["bn_ops"]}


def complexity_table(variants=("EIMN_L", "EIMN_A"), scales=(2, 3, 4)) -> list[dict]:
    """One row per (variant, scale): counted params / Multi-Adds for a 1280x720 HR output, and the paper's."""
    rows = []
    for name in variants:
        for s in scales:
            with torch.device("meta"):
                model = _BUILDERS[name](scale=s)
            h, w = LR_SIZES[s]
            c = count_complexity(model, (1, 3, h, w))
            p_k, p_g = PAPER[(name, s)]
            rows.append({"model": name, "scale": s, "lr_size": f"{w}x{h}", "hr_size": "1280x720", **c,
                         "multi_adds_G": round(c["multi_adds"] / 1e9, 2), "conv_macs_G": round(c["conv_macs"] / 1e9, 2),
                         "paper_params_K": p_k, "paper_multi_adds_G": p_g})
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of :func:`complexity_table` rows."""
    lines = ["| model | scale | LR (WxH) | params | paper params (K) | Multi-Adds (G) | paper Multi-Adds (G) "
             "| conv MACs only (G) |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | x{r['scale']} | {r['lr_size']} | {r['params']:,} | {r['paper_params_K']} "
                     f"| {r['multi_adds_G']:.2f} | {r['paper_multi_adds_G']} | {r['conv_macs_G']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    args = ap.parse_args(argv)
    rows = complexity_table()
    print("Complexity for a 1280x720 HR output (conv MACs + 2 per BatchNorm element, as the paper counts)")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
