"""PSNR cost of the reduced-precision rows of ``benchmarks.model --peers``: the Set5 PSNR (Y channel, the paper's
protocol: eimn.evaluate) of the row's model with the official weights, subtracted from the float32 folded model's,
in dB (positive: the row loses PSNR). Speed rows use seeded random weights; this needs ../shared (weights and Set5):
without them, or without the weights of a model (EIMN_L x4 is not published), it returns a note instead.

Rows: ``folded[cpu,bf16]`` (optimize_for_inference(precision="bf16")) and ``openvino[default]`` where OpenVINO picks
bfloat16 on its own (its INFERENCE_PRECISION_HINT after compiling).
"""
from __future__ import annotations

import os
import pathlib
import tempfile

import torch

__all__ = ["SHARED", "openvino_default_precision", "psnr_costs"]

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


def openvino_default_precision(compiled) -> str:
    """The inference precision OpenVINO chose for a compiled model ('bf16', 'f32', ...)."""
    try:
        return str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower().split(".")[-1].split("<")[-1].strip(">")
    except Exception:  # an OpenVINO without the property
        return "unknown"


def psnr_costs(name: str, scale: int, variants: list[str], threads: int | None = None) -> tuple[dict, str | None]:
    """({variant: PSNR cost in dB}, note or None) for the reduced-precision ``variants`` of model ``name`` x``scale``
    ('folded[cpu,bf16]', 'openvino[default]')."""
    import eimn_kernels as ek
    from eimn.evaluate import evaluate_samples, load_dataset
    from eimn.load import load_model
    want = [v for v in variants if v in ("folded[cpu,bf16]", "openvino[default]")]
    if not want:
        return {}, None
    weights = SHARED / "weights" / f"{name}_x{scale}.pth"
    set5 = SHARED / "datasets" / "Set5"
    if not weights.exists() or not set5.exists():
        return {}, f"psnr cost of {name} x{scale}: {weights if not weights.exists() else set5} not found"
    base = load_model(str(weights), fused=True)
    models = {"fp32": ek.optimize_for_inference(base)}
    if "folded[cpu,bf16]" in want:
        models["folded[cpu,bf16]"] = ek.optimize_for_inference(base, precision="bf16")
    tmp = tempfile.TemporaryDirectory()
    if "openvino[default]" in want:
        import openvino as ov

        from eimn.export import export_onnx
        path = export_onnx(load_model(str(weights)), os.path.join(tmp.name, "model.onnx"), exporter="torchscript")
        cfg = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        compiled = ov.Core().compile_model(path, "CPU", cfg)
        if openvino_default_precision(compiled) != "f32":
            models["openvino[default]"] = lambda x, c=compiled: torch.from_numpy(c(x.numpy())[0])
    samples = load_dataset(str(set5), scale)
    with torch.no_grad():
        psnr = {k: evaluate_samples(m, samples, scale, dataset="Set5", path=k).mean_psnr for k, m in models.items()}
    tmp.cleanup()
    return {k: psnr["fp32"] - v for k, v in psnr.items() if k != "fp32"}, None
