"""Test models whose every parameter and BatchNorm statistic is moved off its initial value, so that folding, the
layer scales and every gate matter (a kernel that drops one of them fails the comparison)."""
import torch
import torch.nn as nn

from eimn.model import EIMN


def perturbed_eimn(dim: int, stages: int, seed: int = 0, scale: int = 2) -> EIMN:
    """An eval-mode EIMN of width ``dim`` and ``stages`` blocks with perturbed BatchNorm statistics, layer scales
    and norm affines (seeded)."""
    torch.manual_seed(seed)
    m = EIMN(embed_dims=dim, scale=scale, num_stages=stages)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
        for name, p in m.named_parameters():
            if "layer_scale" in name or ("norm" in name and name.endswith("weight")):
                p.uniform_(0.5, 1.5)
            elif "norm" in name and name.endswith("bias"):
                p.uniform_(-0.2, 0.2)
    return m.eval()
