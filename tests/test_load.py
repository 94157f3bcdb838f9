"""eimn.load_model: variant/scale detection, strict loading, clear errors for bad files."""
import pytest
import torch

import eimn
from conftest import shared_path


def test_load_eimn_l_x2():
    m = eimn.load_model(shared_path("weights", "EIMN_L_x2.pth"))
    assert isinstance(m, eimn.EIMN) and not m.training
    assert m.variant == "EIMN_L" and m.scale == 2 and m.num_stages == 16


def test_load_safetensors_roundtrip(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    sd = torch.load(shared_path("weights", "EIMN_A_x4.pth"), weights_only=True)
    p = tmp_path / "a4.safetensors"
    st.save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    m = eimn.load_model(p)
    assert m.variant == "EIMN_A" and m.scale == 4


def test_random_tensors_file_raises_valueerror(tmp_path):
    p = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.randn(3, 3), "decoder.bias": torch.randn(3)}, p)
    with pytest.raises(ValueError, match="not an EIMN state_dict"):
        eimn.load_model(p)


def test_truncated_file_raises_valueerror(tmp_path):
    data = shared_path("weights", "EIMN_A_x2.pth").read_bytes()
    p = tmp_path / "trunc.pth"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="not a readable torch weights file"):
        eimn.load_model(p)


def test_not_a_dict_raises(tmp_path):
    p = tmp_path / "t.pt"
    torch.save(torch.randn(4), p)
    with pytest.raises(ValueError, match="expected a dict"):
        eimn.load_model(p)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        eimn.load_model("/nonexistent/weights.pth")


def test_shape_mismatch_raises(tmp_path):
    sd = torch.load(shared_path("weights", "EIMN_A_x2.pth"), weights_only=True)
    sd["block1.0.attn.region.weight"] = torch.zeros(64, 1, 3, 3)
    p = tmp_path / "bad.pth"
    torch.save(sd, p)
    with pytest.raises(ValueError, match="do not match"):
        eimn.load_model(p)
