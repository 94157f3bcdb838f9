"""Faithful port of EIMN (ECAI 2023) following ../shared/reference/SPEC.md.

Parameter names and shapes match the official ``state_dict`` so the
authors' weight files load with ``strict=True``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MOLRCM", "DFFM", "SADFFM", "EIMNBlock", "EIMN", "EIMN_L", "EIMN_A", "molrcm_split"]


def molrcm_split(dim: int) -> tuple[int, int, int]:
    """Channel split (c1, c2, c3) of MOLRCM for ``dim`` channels: 3/8, 1/8, 4/8."""
    c1, c2, c3 = int(3 / 8 * dim), int(1 / 8 * dim), int(4 / 8 * dim)
    if c1 + c2 + c3 != dim:
        raise ValueError(f"MOLRCM needs dim divisible by 8 (split {c1}+{c2}+{c3} != {dim})")
    return c1, c2, c3


class MOLRCM(nn.Module):
    """Multi-order long-range convolutional modulation. x: (N, dim, H, W) -> (N, dim, H, W)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.split = molrcm_split(dim)
        c1, _, c3 = self.split
        self.proj_value = nn.Sequential(nn.Conv2d(dim, dim, 1))
        self.proj_query = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU())
        self.region = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.spatial_1 = nn.Conv2d(c1, c1, 5, padding=4, groups=c1, dilation=2)
        self.spatial_2 = nn.Conv2d(c3, c3, 7, padding=9, groups=c3, dilation=3)
        self.fusion = nn.Conv2d(dim, dim, 1)
        self.out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, _ = self.split
        v = self.proj_value(x)
        q = self.proj_query(x)
        r = self.region(q)
        q1 = self.spatial_1(r[:, :c1])
        q2 = r[:, c1:c1 + c2]
        q3 = self.spatial_2(r[:, c1 + c2:])
        f = self.fusion(torch.cat([q1, q2, q3], dim=1))
        return self.out(F.silu(f) * v)


class DFFM(nn.Module):
    """Dynamic feature flow modulation gate. y: (N, dim, H, W) -> y * c * s."""

    def __init__(self, dim: int, act_ratio: float = 0.25):
        super().__init__()
        reduce = int(dim * act_ratio)
        self.eps = 1e-6
        self.norm = ChannelLayerNorm(dim, eps=1e-6)
        self.global_reduce = nn.Conv2d(dim, reduce, 1)
        self.local_reduce = nn.Conv2d(dim, reduce, 1)
        self.channel_expand = nn.Conv2d(reduce, dim, 1)
        self.spatial_expand = nn.Conv2d(2 * reduce, 1, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        z = self.norm(y)
        g = F.gelu(self.global_reduce(z.mean(dim=(2, 3), keepdim=True)))
        loc = F.gelu(self.local_reduce(z))
        c = torch.sigmoid(self.channel_expand(g))
        s = torch.sigmoid(self.spatial_expand(torch.cat([loc, g.expand(-1, -1, *loc.shape[2:])], dim=1)))
        return y * c * s


class ChannelLayerNorm(nn.Module):
    """LayerNorm over dim 1 of an NCHW tensor (biased variance), with weight and bias of shape (C,)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        x = (x - mu) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class SADFFM(nn.Module):
    """Spatial-aware dynamic feature flow module. x: (N, dim, H, W) -> (N, dim, H, W)."""

    def __init__(self, dim: int, expand_ratio: float = 2.66):
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.hidden = hidden
        self.linear_in = nn.Conv2d(dim, hidden * 2, 1)
        self.SAL = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.linear_out = nn.Conv2d(hidden, dim, 1)
        self.DFFM = DFFM(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.SAL(self.linear_in(x))
        x1, x2 = t.chunk(2, dim=1)
        return self.DFFM(self.linear_out(F.gelu(x1) * x2))


class EIMNBlock(nn.Module):
    """x + ls1 * MOLRCM(BN1(x)), then x + ls2 * SADFFM(BN2(x)). x: (N, dim, H, W)."""

    def __init__(self, dim: int, mlp_ratio: float = 2.66):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = MOLRCM(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = SADFFM(dim, mlp_ratio)
        self.layer_scale_1 = nn.Parameter(1e-2 * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(1e-2 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1[:, None, None] * self.attn(self.norm1(x))
        x = x + self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x))
        return x


class EIMN(nn.Module):
    """EIMN super-resolution network.

    img: (N, 3, h, w) RGB in [0, 1], float -> (N, 3, scale*h, scale*w), not clamped.
    ``fused=True`` swaps MOLRCM/SADFFM for the eimn_kernels fused modules
    (same parameters, same state_dict).
    """

    # forward applies ``upsample`` right after ``tail``: optimize_for_inference may fuse the two
    # (eimn_kernels.tail_conv.use_tail_convs)
    upsample_follows_tail = True

    def __init__(self, embed_dims: int = 64, scale: int = 2, num_stages: int = 16,
                 mlp_ratio: float = 2.66, in_chans: int = 3, fused: bool = False,
                 backend: str = "auto"):
        super().__init__()
        self.embed_dims, self.scale, self.num_stages = embed_dims, scale, num_stages
        self.head = nn.Sequential(nn.Conv2d(in_chans, embed_dims, 3, padding=1))
        for i in range(1, num_stages + 1):
            setattr(self, f"block{i}", nn.Sequential(EIMNBlock(embed_dims, mlp_ratio)))
            setattr(self, f"norm{i}", nn.LayerNorm(embed_dims))
        self.tail = nn.Sequential(nn.Conv2d(embed_dims, in_chans * scale * scale, 3, padding=1))
        self.upsample = nn.PixelShuffle(scale)
        if fused:
            from eimn_kernels import fuse
            fuse(self, backend=backend)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.head(img)
        identity = x
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"block{i}")(x)
            norm = getattr(self, f"norm{i}")
            if getattr(norm, "channels_first", False):  # eimn_kernels.ChannelLayerNorm: NCHW in, NCHW out
                x = norm(x)
            else:
                x = norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.upsample(self.tail(identity + x))

    def channel_norm_names(self) -> list[str]:
        """Children that are LayerNorms over the channels of NCHW features (eimn_kernels.fuse swaps them for the
        fused ChannelLayerNorm)."""
        return [f"norm{i}" for i in range(1, self.num_stages + 1)]


def EIMN_L(scale: int = 2, **kw) -> EIMN:
    """EIMN_L: 16 stages of dim 64."""
    return EIMN(embed_dims=64, scale=scale, num_stages=16, **kw)


def EIMN_A(scale: int = 2, **kw) -> EIMN:
    """EIMN_A: 14 stages of dim 64."""
    return EIMN(embed_dims=64, scale=scale, num_stages=14, **kw)
