"""ONNX export (eimn.export, `eimn export-onnx`): plain ONNX operators, checked against the eager port in ONNX
Runtime on two odd sizes from one dynamic-shape file, for every official weight file.

Tolerances: float32 export <= 1e-4 max abs (measured 1e-6..1e-5); float16 export <= 5e-2 max abs and <= 5e-3 mean
abs on outputs in [0, 1] (measured 2e-2 / ~1e-3: fp16 rounding accumulated over 14-16 blocks)."""
import numpy as np
import pytest
import torch

import eimn
from conftest import shared_path
from eimn.cli import main
from eimn.export import check_onnx, export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

WEIGHTS = ["EIMN_L_x2", "EIMN_L_x3", "EIMN_A_x2", "EIMN_A_x3", "EIMN_A_x4"]


def _plain_ops(path) -> set[str]:
    m = onnx.load(str(path))
    assert {n.domain for n in m.graph.node} <= {"", "ai.onnx"}, "custom-op domains in the graph"
    return {n.op_type for n in m.graph.node}


@pytest.mark.parametrize("name", WEIGHTS)
def test_export_matches_eager_in_onnxruntime(tmp_path, name):
    model = eimn.load_model(shared_path("weights", f"{name}.pth"))
    p = export_onnx(model, tmp_path / f"{name}.onnx", exporter="torchscript")
    ops = _plain_ops(p)
    assert "Conv" in ops and "BatchNormalization" not in ops  # BatchNorm folded away
    assert check_onnx(p, model, sizes=((1, 23, 17), (2, 31, 29))) <= 1e-4


def test_dynamo_export_matches_eager(tmp_path):
    model = eimn.load_model(shared_path("weights", "EIMN_A_x2.pth"))
    p = export_onnx(model, tmp_path / "a2.onnx")
    _plain_ops(p)
    inp = ort.InferenceSession(p, providers=["CPUExecutionProvider"]).get_inputs()[0]
    assert [isinstance(d, str) for d in inp.shape] == [True, False, True, True]  # dynamic N, H, W
    assert check_onnx(p, model, sizes=((1, 23, 17), (2, 31, 29))) <= 1e-4


def test_fp16_static_export(tmp_path):
    model = eimn.load_model(shared_path("weights", "EIMN_A_x4.pth"))
    with pytest.raises(ValueError, match="dynamo"):
        export_onnx(model, tmp_path / "x.onnx", fp16=True, exporter="torchscript")
    p = export_onnx(model, tmp_path / "a4h.onnx", fp16=True, static=(21, 19))
    sess = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert inp.type == "tensor(float16)" and inp.shape == [1, 3, 21, 19]
    x = torch.rand(1, 3, 21, 19, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x).numpy()
    got = sess.run(None, {inp.name: x.numpy().astype(np.float16)})[0].astype(np.float32)
    err = np.abs(got - want)
    assert err.max() <= 5e-2 and err.mean() <= 5e-3, (err.max(), err.mean())


def test_cli_export_onnx(tmp_path, capsys):
    w = str(shared_path("weights", "EIMN_L_x3.pth"))
    rc = main(["export-onnx", "--weights", w, "-o", str(tmp_path / "l3.onnx"), "--exporter", "torchscript"])
    out = capsys.readouterr().out
    assert rc == 0 and "wrote" in out and "ONNX Runtime vs the eager model: max |diff|" in out
    diff = float(out.split("max |diff| ")[1].split()[0])
    assert diff <= 1e-4
    rc = main(["export-onnx", "--weights", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "x.onnx")])
    assert rc == 1
