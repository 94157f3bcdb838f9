"""The tail of an SR network on CPU: its last 3x3 convolution and the PixelShuffle upsampler after it as one C++ pass
(``eimn_C::conv3x3_shuffle_forward``), used by ``optimize_for_inference``.

EIMN ends in ``upsample(tail(x))``: a 3x3 conv of 64 channels to 3 r^2 (48 at x4, 27 at x3), then PixelShuffle(r).
PyTorch's CPU convolution (oneDNN) and the shuffle's own pass took 11.5-13.5 ms at EIMN_A x4 720p (LR 320x180) and
15-17 ms at EIMN_L x3 (LR 426x240) on a 2-core Zen 5; the C++ kernel, a GEMM over a ring of zero-padded source rows
whose results go pixel-shuffled straight to the output, 8.4-8.5 and 9.5-10 ms. Same operator otherwise:
:class:`ShuffleConv2d` is an ``nn.Conv2d`` (same parameters, same state_dict keys) whose forward returns
``pixel_shuffle(conv(x), upscale)``, through the C++ kernel for float32/float64 CPU tensors with grad mode off and the
kernels loaded, through ``nn.Conv2d.forward`` + ``F.pixel_shuffle`` elsewhere; the model's PixelShuffle module is
replaced by :class:`ShuffledAway`, which returns its input.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .stem_conv import conv_sharing_parameters, is_same_3x3_conv, runs_cpu_conv_kernel

__all__ = ["ShuffleConv2d", "ShuffledAway", "use_tail_convs"]


class ShuffleConv2d(nn.Conv2d):
    """A 3x3 'same' nn.Conv2d followed by PixelShuffle(upscale), in one module.
    x: (N, C_in, H, W) -> (N, C_out / upscale^2, upscale H, upscale W), the input's dtype."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, upscale: int) -> "ShuffleConv2d":
        """``conv`` then PixelShuffle(upscale), sharing ``conv``'s parameters (``is_same_3x3_conv(conv)`` must hold,
        and upscale^2 must divide its output channels)."""
        if not is_same_3x3_conv(conv):
            raise ValueError(f"ShuffleConv2d takes a 3x3, stride 1, padding 1 conv, got {conv}")
        if upscale < 1 or conv.out_channels % (upscale * upscale):
            raise ValueError(f"upscale {upscale}: its square must divide the conv's {conv.out_channels} output channels")
        new = conv_sharing_parameters(cls, conv)
        new.upscale = int(upscale)
        return new

    def runs_kernel(self, x: torch.Tensor) -> bool:
        """Whether forward(x) runs as the one C++ pass."""
        return runs_cpu_conv_kernel(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.runs_kernel(x):
            return F.pixel_shuffle(super().forward(x), self.upscale)
        bias = self.bias if self.bias is not None else x.new_zeros(self.out_channels)
        return torch.ops.eimn_C.conv3x3_shuffle_forward(x, self.weight, bias, self.upscale)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", upscale={self.upscale}"


class ShuffledAway(nn.Module):
    """Stands where a PixelShuffle was fused into the conv before it (:class:`ShuffleConv2d`): returns its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def use_tail_convs(model: nn.Module) -> int:
    """Fuse ``model.upsample`` (an nn.PixelShuffle) into the 3x3 conv that ends ``model.tail`` (the conv itself or the
    last module of an nn.Sequential), in place, for models that declare ``upsample_follows_tail`` (their forward
    applies ``upsample`` right after ``tail``: eimn.model.EIMN). Returns the number of convs replaced (0 or 1)."""
    if not getattr(model, "upsample_follows_tail", False):
        return 0
    tail, up = getattr(model, "tail", None), getattr(model, "upsample", None)
    if not isinstance(up, nn.PixelShuffle):
        return 0
    holder, name = (tail, str(len(tail) - 1)) if isinstance(tail, nn.Sequential) and len(tail) else (model, "tail")
    conv = getattr(holder, name, None)
    r = up.upscale_factor
    if type(conv) is not nn.Conv2d or not is_same_3x3_conv(conv) or conv.out_channels % (r * r):
        return 0
    setattr(holder, name, ShuffleConv2d.from_conv(conv, r))
    model.upsample = ShuffledAway()
    return 1
