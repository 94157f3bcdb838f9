"""EIMN in spandrel (eimn.spandrel): the five official files and traiNNer-style wrappers load as EIMN with the
right scale and flags, the model is the eager port (and optimize_for_inference takes it), and other
architectures' state dicts still load as themselves after install().

spandrel imports torchvision; where no torchvision matching the CPU torch can be installed (no CPU wheel of it for
this torch), a stand-in of the three functions two of spandrel's architectures (LaMa, RestoreFormer) import at
module level is put in sys.modules: those two are never called here."""
import enum
import sys
import types

import pytest
import torch

import eimn
import eimn_kernels as ek
from conftest import shared_path


def _import_spandrel():
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or a CUDA build that cannot load with the CPU torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        tv, tr, fn = (types.ModuleType(n) for n in ("torchvision", "torchvision.transforms",
                                                     "torchvision.transforms.functional"))

        def unavailable(*a, **k):
            raise RuntimeError("torchvision stand-in (tests/test_spandrel.py)")
        fn.InterpolationMode = enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC")
        fn.rotate = fn.normalize = unavailable
        tv.transforms, tr.functional = tr, fn
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn})
    return pytest.importorskip("spandrel")


spandrel = _import_spandrel()
import eimn.spandrel as eimn_spandrel  # noqa: E402

WEIGHTS = {"EIMN_L_x2": 2, "EIMN_L_x3": 3, "EIMN_A_x2": 2, "EIMN_A_x3": 3, "EIMN_A_x4": 4}


@pytest.fixture(scope="module")
def registry():
    reg = spandrel.MAIN_REGISTRY.copy()
    assert eimn_spandrel.install(reg) and not eimn_spandrel.install(reg)  # once
    return reg


def test_eimn_is_not_known_before_install():
    sd = eimn.EIMN(embed_dims=16, scale=2, num_stages=2).state_dict()
    reg = spandrel.MAIN_REGISTRY.copy()
    if "EIMN" not in reg:
        with pytest.raises(spandrel.UnsupportedModelError):
            reg.load(sd)


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_official_weights_load_as_eimn(registry, name):
    sd = torch.load(shared_path("weights", f"{name}.pth"), map_location="cpu", weights_only=True)
    desc = registry.load(spandrel.canonicalize_state_dict(sd))
    assert isinstance(desc, spandrel.ImageModelDescriptor)
    assert desc.architecture.id == "EIMN" and desc.architecture.name == "EIMN"
    assert desc.scale == WEIGHTS[name] and desc.purpose == "SR" and name.split("_x")[0] in desc.tags
    assert desc.input_channels == desc.output_channels == 3
    assert desc.supports_bfloat16 and not desc.supports_half
    assert desc.tiling == spandrel.ModelTiling.DISCOURAGED
    assert isinstance(desc.model, eimn.EIMN)
    x = torch.rand(1, 3, 12, 10)
    want = eimn.load_model(shared_path("weights", f"{name}.pth"))
    with torch.no_grad():
        torch.testing.assert_close(desc(x), want(x).clamp(0, 1))  # the descriptor's call clamps
        torch.testing.assert_close(ek.optimize_for_inference(desc.model)(x), want(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("wrapper", ["params_ema", "params"])
def test_trainner_checkpoints_load_from_file(registry, tmp_path, wrapper):
    sd = torch.load(shared_path("weights", "EIMN_A_x4.pth"), map_location="cpu", weights_only=True)
    p = tmp_path / "net_g_latest.pth"
    torch.save({wrapper: sd, "optimizer": {}}, p)
    desc = spandrel.ModelLoader(registry=registry).load_from_file(p)
    assert desc.architecture.id == "EIMN" and desc.scale == 4


def test_bfloat16_works_as_flagged(registry):
    sd = torch.load(shared_path("weights", "EIMN_A_x2.pth"), map_location="cpu", weights_only=True)
    desc = registry.load(spandrel.canonicalize_state_dict(sd))
    x = torch.rand(1, 3, 16, 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = desc.model(x)
        y = desc.model.to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    assert (y - ref).abs().mean() < 0.02


def _others():
    """Random-weight state dicts of a few of spandrel's own architectures (small configurations)."""
    import importlib
    A = {n: importlib.import_module(f"spandrel.architectures.{n}") for n in
         ("Compact", "SPAN", "ESRGAN", "SAFMN", "PLKSR", "OmniSR")}
    return {
        "Compact": A["Compact"].Compact(num_feat=16, num_conv=4, upscale=2),
        "SPAN": A["SPAN"].SPAN(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=2),
        "ESRGAN": A["ESRGAN"].ESRGAN(num_filters=16, num_blocks=2, scale=2),
        "SAFMN": A["SAFMN"].SAFMN(dim=16, n_blocks=2, upscaling_factor=2),
        "PLKSR": A["PLKSR"].PLKSR(dim=16, n_blocks=2, upscaling_factor=2),
        "OmniSR": A["OmniSR"].OmniSR(num_feat=16, up_scale=2),
    }


@pytest.mark.parametrize("arch", ["Compact", "SPAN", "ESRGAN", "SAFMN", "PLKSR", "OmniSR"])
def test_other_architectures_still_load_as_themselves(registry, arch):
    sd = _others()[arch].state_dict()
    assert not eimn_spandrel.detect(sd)
    assert registry.load(sd).architecture.id == arch


def test_detect_rejects_near_misses():
    sd = eimn.EIMN(embed_dims=16, scale=2, num_stages=2).state_dict()
    assert eimn_spandrel.detect(sd)
    bad = dict(sd, **{"block1.0.attn.region.weight": torch.zeros(16, 1, 3, 3)})
    assert not eimn_spandrel.detect(bad)
    assert not eimn_spandrel.detect({k: v for k, v in sd.items() if k != "block1.0.mlp.SAL.weight"})
    assert not eimn_spandrel.detect(dict(sd, **{"tail.0.weight": torch.zeros(10, 16, 3, 3)}))  # no pixel shuffle
