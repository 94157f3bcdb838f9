"""Exact eval-time folds of affine maps into 1x1 convolutions (float64 algebra, stored in the conv's dtype), shared by
the EIMN and VAN block folding (inference.py, lka_inference.py)."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["bn_affine", "fold_input_affine", "fold_output_scale"]


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) in float64 of an eval-mode BatchNorm2d: bn(x) = x * scale + shift per channel."""
    inv_std = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
    scale = bn.weight.double() * inv_std if bn.affine else inv_std
    shift = (bn.bias.double() if bn.affine else 0.0) - bn.running_mean.double() * scale
    return scale, shift


def fold_input_affine(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """conv(x * scale + shift) == conv'(x) for a 1x1 conv: rewrite its weight and bias in place."""
    dt = conv.weight.dtype  # fold in float64, store in the model's dtype
    w = conv.weight.double()  # (Cout, Cin, 1, 1)
    b = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    new_b = b + w[:, :, 0, 0] @ shift.double()
    conv.weight = nn.Parameter((w * scale.double()[None, :, None, None]).to(dt))
    conv.bias = nn.Parameter(new_b.to(dt))


def fold_output_scale(conv: nn.Conv2d, scale: torch.Tensor) -> None:
    """scale * conv(x) == conv'(x): rewrite weight and bias in place."""
    dt = conv.weight.dtype
    conv.weight = nn.Parameter((conv.weight.double() * scale.double()[:, None, None, None]).to(dt))
    conv.bias = nn.Parameter((conv.bias.double() * scale.double()).to(dt))
