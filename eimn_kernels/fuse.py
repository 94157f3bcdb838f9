"""Swap EIMN's MOLRCM / SADFFM layers (and its LayerNorms between blocks), and large-kernel attention (VAN's LKA
and attention block), for the fused modules, in any nn.Module tree."""
from __future__ import annotations

import torch.nn as nn

from .lka_modules import LKA, LKAAttention, is_lka, is_lka_attention
from .modules import MOLRCM, SADFFM, ChannelLayerNorm

__all__ = ["fuse", "is_molrcm", "is_sadffm"]

_MOLRCM_CHILDREN = ("proj_value", "proj_query", "region", "spatial_1", "spatial_2", "fusion", "out")
_SADFFM_CHILDREN = ("linear_in", "SAL", "linear_out", "DFFM")


def is_molrcm(m: nn.Module) -> bool:
    """True for a MOLRCM-shaped module (recognised by its children's names), fused or not."""
    return all(hasattr(m, c) for c in _MOLRCM_CHILDREN) and isinstance(getattr(m, "region"), nn.Conv2d)


def is_sadffm(m: nn.Module) -> bool:
    """True for a SADFFM-shaped module (recognised by its children's names), fused or not."""
    return all(hasattr(m, c) for c in _SADFFM_CHILDREN) and isinstance(getattr(m, "SAL"), nn.Conv2d)


def fuse(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace, in place, every MOLRCM and SADFFM in ``model`` (and the channel LayerNorms a model names through
    ``channel_norm_names()``, as EIMN does), every VAN-style attention block (proj_1, activation, an LKA
    spatial_gating_unit, proj_2) and every other LKA (conv0, conv_spatial, conv1) by fused modules holding the same
    parameters (state_dict keys and values unchanged); recognised by children names and conv shapes. Returns
    ``model``. Fused modules already present get ``backend`` set."""
    fused = (MOLRCM, SADFFM, ChannelLayerNorm, LKA, LKAAttention)
    if isinstance(model, fused):
        for m in model.modules():
            if isinstance(m, fused):
                m.backend = backend
        return model
    # A model that names its channel LayerNorms (eimn.model.EIMN: norm1..normN, applied to NCHW features) gets
    # the fused ChannelLayerNorm there; other LayerNorms are left alone (they may normalise a last dimension).
    channel_norms = set(model.channel_norm_names()) if hasattr(model, "channel_norm_names") else set()
    for name, child in list(model.named_children()):
        if isinstance(child, fused):
            fuse(child, backend)
        elif name in channel_norms and isinstance(child, nn.LayerNorm):
            setattr(model, name, ChannelLayerNorm.from_module(child, backend))
        elif is_molrcm(child):
            setattr(model, name, MOLRCM.from_module(child, backend))
        elif is_sadffm(child):
            setattr(model, name, SADFFM.from_module(child, backend))
        elif is_lka_attention(child):
            setattr(model, name, LKAAttention.from_module(child, backend))
        elif is_lka(child):
            setattr(model, name, LKA.from_module(child, backend))
        else:
            fuse(child, backend)
    return model
