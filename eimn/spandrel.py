"""EIMN as a spandrel architecture: the model loader behind chaiNNer, ComfyUI and other SR front ends.

    import eimn.spandrel, spandrel
    eimn.spandrel.install()                          # once: adds EIMN to spandrel.MAIN_REGISTRY
    desc = spandrel.ModelLoader().load_from_file("EIMN_L_x2.pth")   # ImageModelDescriptor, scale 2
    fast = eimn_kernels.optimize_for_inference(desc.model)          # optional: folded and fused

Detection is by the state dict's keys and shapes (a head 3x3 conv, numbered EIMN blocks whose MOLRCM has the 5x5
region conv, the 5x5 and 7x7 dilated convs and the gated SADFFM with its DFFM gate, a pixel-shuffle tail), so other
architectures' files are not claimed. spandrel itself unwraps ``{"params_ema": ...}`` / ``{"params": ...}``
(traiNNer-redux) and ``module.`` prefixes.

Descriptor flags, as measured: ``supports_bfloat16`` True (bfloat16 model and input: mean abs error 0.0065 on
[0, 1] outputs); ``supports_half`` False (pure float16 overflows in the DFFM LayerNorm statistics: mean error
0.035); ``tiling`` DISCOURAGED: the DFFM gate uses the image-wide mean, so tiles differ slightly from the whole
image (about 60-64 dB PSNR against it for 64-96 px tiles).

Written as a spandrel architecture package (``EIMNArch`` with ``detect`` and ``load``) so it can be proposed
upstream (EIMN is MIT); the model class it builds is :class:`eimn.model.EIMN`.
"""
from __future__ import annotations

from .load import infer_config, variant_name
from .model import EIMN

__all__ = ["EIMNArch", "install", "detect"]

ARCH_ID = "EIMN"

# keys every EIMN state dict has (block 1 and its two layers), besides head/tail and the LayerNorm after block 1
_KEYS = (
    "head.0.weight", "tail.0.weight", "norm1.weight", "norm1.bias",
    "block1.0.layer_scale_1", "block1.0.layer_scale_2", "block1.0.norm1.running_mean",
    "block1.0.attn.region.weight", "block1.0.attn.spatial_1.weight", "block1.0.attn.spatial_2.weight",
    "block1.0.attn.fusion.weight", "block1.0.attn.proj_value.0.weight", "block1.0.attn.proj_query.0.weight",
    "block1.0.attn.out.weight",
    "block1.0.mlp.linear_in.weight", "block1.0.mlp.SAL.weight", "block1.0.mlp.linear_out.weight",
    "block1.0.mlp.DFFM.norm.weight", "block1.0.mlp.DFFM.global_reduce.weight",
)


def detect(state_dict: dict) -> bool:
    """True for an EIMN state dict (keys and the shapes EIMN's layers give them)."""
    if not all(k in state_dict for k in _KEYS):
        return False
    sd = state_dict
    try:
        head, tail = sd["head.0.weight"], sd["tail.0.weight"]
        dim = head.shape[0]
        region = sd["block1.0.attn.region.weight"]
        linear_in, sal = sd["block1.0.mlp.linear_in.weight"], sd["block1.0.mlp.SAL.weight"]
        ok = (head.dim() == 4 and head.shape[2:] == (3, 3) and tail.dim() == 4 and tail.shape[1] == dim
              and region.shape == (dim, 1, 5, 5)
              and sd["block1.0.attn.spatial_1.weight"].shape[1:] == (1, 5, 5)
              and sd["block1.0.attn.spatial_2.weight"].shape[1:] == (1, 7, 7)
              and linear_in.shape[1] == dim and linear_in.shape[0] % 2 == 0
              and sal.shape[:2] == (linear_in.shape[0], 1)
              and sd["block1.0.mlp.linear_out.weight"].shape[:2] == (dim, linear_in.shape[0] // 2))
        if not ok:
            return False
        infer_config(sd)  # a pixel-shuffle tail and contiguous block numbers
    except (ValueError, AttributeError, IndexError, TypeError):
        return False
    return True


def _spandrel():
    try:
        import spandrel
    except ImportError as e:
        raise ImportError("eimn.spandrel needs the 'spandrel' package (pip install spandrel)") from e
    return spandrel


def _arch_class():
    spandrel = _spandrel()

    class EIMNArch(spandrel.Architecture[EIMN]):
        """spandrel architecture of EIMN (ECAI 2023): detect() by keys and shapes, load() -> ImageModelDescriptor."""

        def __init__(self) -> None:
            super().__init__(id=ARCH_ID, name="EIMN", detect=detect)

        def load(self, state_dict):
            cfg = infer_config(state_dict, source="state_dict")
            model = EIMN(**cfg)
            model.load_state_dict(state_dict, strict=True)
            scale = cfg["scale"]
            return spandrel.ImageModelDescriptor(
                model, state_dict, architecture=self, purpose="SR" if scale > 1 else "Restoration",
                tags=[variant_name(cfg), f"{cfg['embed_dims']}nf", f"{cfg['num_stages']}b"],
                supports_half=False, supports_bfloat16=True, scale=scale,
                input_channels=cfg["in_chans"], output_channels=cfg["in_chans"],
                tiling=spandrel.ModelTiling.DISCOURAGED)

    return EIMNArch


def __getattr__(name: str):
    if name == "EIMNArch":  # the class needs spandrel's base class: made on first use
        cls = _arch_class()
        globals()["EIMNArch"] = cls
        return cls
    raise AttributeError(name)


def install(registry=None) -> bool:
    """Add EIMN to spandrel's registry (``spandrel.MAIN_REGISTRY`` by default); False when it is there already."""
    spandrel = _spandrel()
    registry = spandrel.MAIN_REGISTRY if registry is None else registry
    if ARCH_ID in registry:
        return False
    arch = __getattr__("EIMNArch")()
    registry.add(spandrel.ArchSupport.from_architecture(arch))
    return True

