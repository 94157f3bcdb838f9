"""The image stem of an SR network on CPU: a 3x3 convolution of a few-channel image (EIMN's ``head``: 3 -> 64
channels) as im2col + the CPU GEMM, used by ``optimize_for_inference``.

PyTorch's CPU convolution (oneDNN) with 3 input channels runs far below the GEMM rate: at LR 320x180 (EIMN_A x4 to
720p) it took 13-15 ms of a 434 ms model on a 2-core Zen 5, where unfolding the 27 taps (``F.unfold``, 6 MB) and
one (64 x 27) GEMM of the CPU kernels (``eimn_C::conv1x1_forward``) take 2.5-3.4 ms. Same operator otherwise:
:class:`StemConv2d` is an ``nn.Conv2d`` (same parameters, same state_dict keys) that takes this path for
float32/float64 CPU tensors with grad mode off and the C++ kernels loaded, and is ``nn.Conv2d.forward`` elsewhere
(CUDA, autograd, torch.compile, other dtypes). Wide inputs stay on oneDNN: unfolding C channels makes 9 C planes
(the 64-channel tail conv as im2col was 10x slower).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .modules import cpu_inference_input

__all__ = ["StemConv2d", "is_stem_conv", "use_stem_convs", "MAX_STEM_CHANNELS"]

MAX_STEM_CHANNELS = 4  # input channels up to which the im2col path pays (an image: 1, 3 or 4 channels)


def is_same_3x3_conv(m: nn.Module) -> bool:
    """Whether ``m`` is an nn.Conv2d of 3x3, stride 1, 'same' zero padding 1, dilation 1, groups 1."""
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1)
            and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros")


def is_stem_conv(m: nn.Module) -> bool:
    """Whether ``m`` is a plain nn.Conv2d that :class:`StemConv2d` replaces: :func:`is_same_3x3_conv`, at most
    MAX_STEM_CHANNELS input channels."""
    return type(m) is nn.Conv2d and m.in_channels <= MAX_STEM_CHANNELS and is_same_3x3_conv(m)


def conv_sharing_parameters(cls: type, conv: nn.Conv2d) -> nn.Conv2d:
    """A new ``cls`` (an nn.Conv2d subclass) with ``conv``'s settings and the same Parameter objects (weight, and bias
    or None), in ``conv``'s training mode; nn.Module's own state (parameter, buffer, hook dicts) fresh, not shared."""
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    base = set(new.__dict__)
    new.__dict__.update({k: v for k, v in conv.__dict__.items() if k not in base})  # Conv2d's settings
    new.register_parameter("weight", conv.weight)
    new.register_parameter("bias", conv.bias)
    return new.train(conv.training)


def runs_cpu_conv_kernel(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether a C++ CPU inference pass of ``conv`` takes x: :func:`cpu_inference_input`, conv's input channels and
    dtype."""
    return cpu_inference_input(x) and x.shape[1] == conv.in_channels and conv.weight.dtype == x.dtype


class StemConv2d(nn.Conv2d):
    """nn.Conv2d(C_in <= 4, C_out, 3, padding=1) whose CPU inference runs as im2col + GEMM.
    x: (N, C_in, H, W) -> (N, C_out, H, W), the input's dtype."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "StemConv2d":
        """The same convolution, sharing ``conv``'s parameters (``is_stem_conv(conv)`` must hold)."""
        if not is_stem_conv(conv):
            raise ValueError(f"StemConv2d takes a 3x3, stride 1, padding 1 conv of <= {MAX_STEM_CHANNELS} channels, "
                             f"got {conv}")
        return conv_sharing_parameters(cls, conv)

    def runs_gemm(self, x: torch.Tensor) -> bool:
        """Whether forward(x) runs as im2col + the CPU GEMM."""
        return runs_cpu_conv_kernel(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.runs_gemm(x):
            return super().forward(x)
        N, C, H, W = x.shape
        cols = F.unfold(x, 3, padding=1).view(N, C * 9, H, W)  # row c * 9 + ky * 3 + kx: the weight's order
        bias = self.bias if self.bias is not None else x.new_zeros(self.out_channels)
        none = x.new_empty(0)
        return torch.ops.eimn_C.conv1x1_forward(cols, self.weight.reshape(self.out_channels, C * 9, 1, 1), bias,
                                                none, none, 0)


def use_stem_convs(model: nn.Module) -> int:
    """Replace every stem conv of ``model`` (:func:`is_stem_conv`) by a :class:`StemConv2d` sharing its parameters,
    in place. Returns the number replaced."""
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_stem_conv(child):
                setattr(parent, name, StemConv2d.from_conv(child))
                n += 1
    return n
