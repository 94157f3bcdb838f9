"""nn.Modules of large-kernel attention (VAN's LKA and attention block) running the fused ops, with the children
names and state_dict keys such models use, so their checkpoints load unchanged and ``fuse`` can swap them in."""
from __future__ import annotations

import torch
import torch.nn as nn

from .modules import _forward
from .ops import lka, lka_attention

__all__ = ["LKA", "LKAAttention", "is_lka", "is_lka_attention"]


def _dw(dim: int, k: int, d: int) -> nn.Conv2d:
    return nn.Conv2d(dim, dim, k, padding=d * (k - 1) // 2, dilation=d, groups=dim)


class LKA(nn.Module):
    """Large Kernel Attention (VAN): ``x * conv1(conv_spatial(conv0(x)))``; x: (N, dim, H, W) -> (N, dim, H, W).

    Children: ``conv0`` (depthwise ``kernel_size``, 'same'), ``conv_spatial`` (depthwise ``dilated_kernel_size``
    with ``dilation``, 'same'), ``conv1`` (1x1). Fused: the two depthwise convs in one pass (conv0's output never
    written), the product in the 1x1's epilogue.
    """

    def __init__(self, dim: int, kernel_size: int = 5, dilated_kernel_size: int = 7, dilation: int = 3,
                 backend: str = "auto"):
        super().__init__()
        self.dim, self.dilation, self.backend = dim, dilation, backend
        self.conv0 = _dw(dim, kernel_size, 1)
        self.conv_spatial = _dw(dim, dilated_kernel_size, dilation)
        self.conv1 = nn.Conv2d(dim, dim, 1)

    @classmethod
    def from_module(cls, m: nn.Module, backend: str = "auto") -> "LKA":
        """Fused LKA sharing the parameters (same Parameter objects) of an LKA-shaped module ``m``."""
        if not is_lka(m):
            raise ValueError(f"not an LKA-shaped module: {type(m).__name__}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.dim, new.dilation, new.backend = m.conv0.weight.shape[0], m.conv_spatial.dilation[0], backend
        for name in ("conv0", "conv_spatial", "conv1"):
            setattr(new, name, getattr(m, name))
        return new.train(m.training)

    _PARAMS = (("conv0", "weight"), ("conv0", "bias"), ("conv_spatial", "weight"), ("conv_spatial", "bias"),
               ("conv1", "weight"), ("conv1", "bias"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward(self, x)

    def _run(self, x, w0, b0, ws, bs, w1, b1):
        return lka(x, w0, b0, ws, bs, w1, b1, self.dilation, backend=self.backend)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dilation={self.dilation}, backend={self.backend!r}"


class LKAAttention(nn.Module):
    """VAN's attention block: ``proj_2(LKA(GELU(proj_1(x)))) + x``; x: (N, dim, H, W) -> (N, dim, H, W).

    Children: ``proj_1`` (1x1), ``activation`` (GELU), ``spatial_gating_unit`` (an :class:`LKA`), ``proj_2``
    (1x1). Fused: GELU in proj_1's epilogue, the LKA as above, the residual in proj_2's epilogue.
    """

    def __init__(self, dim: int, kernel_size: int = 5, dilated_kernel_size: int = 7, dilation: int = 3,
                 backend: str = "auto"):
        super().__init__()
        self.dim, self.backend = dim, backend
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = LKA(dim, kernel_size, dilated_kernel_size, dilation, backend)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    @classmethod
    def from_module(cls, m: nn.Module, backend: str = "auto") -> "LKAAttention":
        """Fused attention block sharing the parameters of an LKAAttention-shaped module ``m``."""
        if not is_lka_attention(m):
            raise ValueError(f"not an LKA-attention-shaped module: {type(m).__name__}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.dim, new.backend = m.proj_1.weight.shape[0], backend
        sgu = m.spatial_gating_unit
        new.proj_1, new.activation = m.proj_1, m.activation  # in the original's order: same state_dict key order
        new.spatial_gating_unit = sgu if isinstance(sgu, LKA) else LKA.from_module(sgu, backend)
        new.spatial_gating_unit.backend = backend
        new.proj_2 = m.proj_2
        return new.train(m.training)

    _PARAMS = (("proj_1", "weight"), ("proj_1", "bias"), ("spatial_gating_unit", "conv0", "weight"),
               ("spatial_gating_unit", "conv0", "bias"), ("spatial_gating_unit", "conv_spatial", "weight"),
               ("spatial_gating_unit", "conv_spatial", "bias"), ("spatial_gating_unit", "conv1", "weight"),
               ("spatial_gating_unit", "conv1", "bias"), ("proj_2", "weight"), ("proj_2", "bias"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward(self, x)

    def _run(self, x, wp1, bp1, w0, b0, ws, bs, w1, b1, wp2, bp2):
        return lka_attention(x, wp1, bp1, w0, b0, ws, bs, w1, b1, wp2, bp2, self.spatial_gating_unit.dilation,
                             backend=self.backend)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, backend={self.backend!r}"


def _depthwise_same(c: nn.Module) -> bool:
    """A square, odd, stride-1, 'same'-padded depthwise Conv2d with a bias."""
    if not isinstance(c, nn.Conv2d) or c.bias is None or c.padding_mode != "zeros":
        return False
    k, d = c.kernel_size, c.dilation
    return (k[0] == k[1] and k[0] % 2 == 1 and d[0] == d[1] and c.stride == (1, 1) and c.groups == c.in_channels
            == c.out_channels and c.padding == (d[0] * (k[0] - 1) // 2,) * 2)


def _pointwise(c: nn.Module, dim: int) -> bool:
    return (isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) and c.stride == (1, 1) and c.groups == 1
            and c.in_channels == dim and c.out_channels == dim and c.bias is not None)


def is_lka(m: nn.Module) -> bool:
    """An LKA by children names and conv shapes: conv0 (depthwise, odd, undilated), conv_spatial (depthwise, odd,
    any dilation), conv1 (1x1), all 'same' and with biases, one channel count; fused or not."""
    if isinstance(m, LKA):
        return True
    c0, cs, c1 = (getattr(m, n, None) for n in ("conv0", "conv_spatial", "conv1"))
    return (_depthwise_same(c0) and _depthwise_same(cs) and c0.dilation == (1, 1)
            and cs.in_channels == c0.in_channels and _pointwise(c1, c0.in_channels))


def is_lka_attention(m: nn.Module) -> bool:
    """A VAN attention block by children names: proj_1 (1x1), activation (nn.GELU, exact), an LKA
    spatial_gating_unit, proj_2 (1x1)."""
    if isinstance(m, LKAAttention):
        return True
    sgu, act = getattr(m, "spatial_gating_unit", None), getattr(m, "activation", None)
    if sgu is None or not is_lka(sgu) or not isinstance(act, nn.GELU) or act.approximate != "none":
        return False
    dim = sgu.conv1.in_channels if hasattr(sgu, "conv1") else None
    return _pointwise(getattr(m, "proj_1", None), dim) and _pointwise(getattr(m, "proj_2", None), dim)
