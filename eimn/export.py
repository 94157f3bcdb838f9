"""ONNX export of EIMN: the folded eager model (BatchNorm and layer scales folded into the 1x1 convolutions,
``eimn_kernels.optimize_for_inference(fused=False)``) in plain ONNX operators, no custom ops, so that ONNX Runtime,
OpenVINO, TensorRT and other runtimes can run it.

    eimn export-onnx --weights EIMN_L_x2.pth -o eimn_l_x2.onnx [--opset 18] [--fp16] [--static 180x320]

Input ``input``: (N, 3, H, W) RGB in [0, 1]; output ``output``: (N, 3, scale*H, scale*W), not clamped. Batch,
height and width are dynamic unless ``static`` fixes H and W (and N = 1). ``fp16`` exports the model in float16
with float16 input and output.
"""
from __future__ import annotations

import os

import torch

__all__ = ["export_onnx", "check_onnx"]

EXPORTERS = ("dynamo", "torchscript")


def _model(model_or_path):
    if isinstance(model_or_path, (str, os.PathLike)):
        from .load import load_model
        return load_model(model_or_path)
    return model_or_path


def export_onnx(model_or_path, path: str | os.PathLike, opset: int = 18, fp16: bool = False,
                static: tuple[int, int] | None = None, exporter: str = "dynamo") -> str:
    """Export an EIMN (a model, or a weight file as ``eimn.load_model`` reads) to the ONNX file ``path``; returns it.

    ``opset``: the ONNX opset (18 default; the torchscript exporter supports up to 20). ``static``: (H, W) of a
    fixed-size graph for batch 1; default dynamic batch, height and width. ``exporter``: 'dynamo'
    (``torch.export``-based, the default) or 'torchscript' (PyTorch's older exporter, faster to run).
    """
    import eimn_kernels as ek
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if fp16 and exporter == "torchscript":  # its LayerNormalization mixes float and float16 inputs
        raise ValueError("a float16 export needs the 'dynamo' exporter")
    model = ek.optimize_for_inference(_model(model_or_path).cpu().float(), fused=False)
    dtype = torch.float16 if fp16 else torch.float32
    model = model.to(dtype)
    if static is not None:
        h, w = static
        if h < 1 or w < 1:
            raise ValueError(f"static size must be positive, got {h}x{w}")
        x = torch.rand(1, 3, h, w, dtype=dtype)
    else:
        x = torch.rand(2, 3, 23, 17, dtype=dtype)  # odd sizes: no size gets specialised
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    kw: dict = {"input_names": ["input"], "output_names": ["output"], "opset_version": opset}
    if exporter == "dynamo":
        if static is None:
            d = torch.export.Dim.DYNAMIC
            kw["dynamic_shapes"] = ({0: d, 2: d, 3: d},)
        kw["dynamo"] = True
    else:
        if static is None:
            kw["dynamic_axes"] = {"input": {0: "batch", 2: "height", 3: "width"},
                                  "output": {0: "batch", 2: "out_height", 3: "out_width"}}
        kw["dynamo"] = False
    with torch.no_grad():
        torch.onnx.export(model, (x,), path, **kw)
    return path


def check_onnx(path: str | os.PathLike, model_or_path, sizes=((1, 23, 17), (2, 31, 29)),
               provider: str = "CPUExecutionProvider") -> float:
    """Run the ONNX file in ONNX Runtime and the eager model on random inputs of ``sizes`` ((N, H, W) each, or
    (1, H, W) for a static graph); returns the largest absolute difference of the outputs."""
    import numpy as np
    import onnxruntime as ort
    model = _model(model_or_path).cpu().float().eval()
    sess = ort.InferenceSession(os.fspath(path), providers=[provider])
    inp = sess.get_inputs()[0]
    np_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for n, h, w in sizes:
        x = torch.rand(n, 3, h, w, generator=g)
        with torch.no_grad():
            want = model(x).numpy()
        got = sess.run(None, {inp.name: x.numpy().astype(np_dtype)})[0].astype(np.float32)
        if got.shape != want.shape:
            raise ValueError(f"{path}: output shape {got.shape} for input {tuple(x.shape)}, expected {want.shape}")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst
