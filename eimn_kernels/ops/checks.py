"""Input validation shared by the fused ops: clear errors instead of crashes or silent wrong answers."""
from __future__ import annotations

import torch


def check_image(name: str, x: torch.Tensor, channels: int | None = None) -> None:
    """x must be a floating (N, C, H, W) tensor (and C == channels if given). N, H or W may be 0: the ops then
    return an empty output (:func:`empty_result`), as ``nn.Conv2d`` does."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-d (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels, the weights expect {channels}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has no channels (shape {tuple(x.shape)})")


def check_weight(name: str, w: torch.Tensor, shape: tuple, ref: torch.Tensor) -> None:
    """w must have ``shape`` (None entries are free) and the dtype and device of ``ref``."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    ws = w.shape
    ok = len(ws) == len(shape)
    if ok:  # a plain loop: this runs ~15 times per fused layer call
        for s, n in zip(shape, ws):
            if s is not None and s != n:
                ok = False
                break
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(ws)}")
    if w.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {w.dtype}, the input has {ref.dtype}; cast them to one dtype")
    if w.device != ref.device:
        raise ValueError(f"{name} is on {w.device}, the input on {ref.device}")


def check_same(name: str, t: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    """t must have the shape, dtype and device of ``ref``."""
    check_image(name, t)
    if t.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, {ref_name} has {tuple(ref.shape)}")
    check_weight(name, t, tuple(ref.shape), ref)


def odd_kernel(name: str, w: torch.Tensor) -> int:
    """Kernel size of a square depthwise weight (C, 1, K, K) with odd K."""
    k = w.shape[-1]
    if w.shape[-2] != k or k % 2 == 0:
        raise ValueError(f"{name} must be a square odd-sized kernel, got {tuple(w.shape[-2:])}")
    return k


def needs_grad(*ts: torch.Tensor) -> bool:
    """A gradient will be needed: grad mode on and some tensor requires grad."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def is_empty(x: torch.Tensor) -> bool:
    """An image with no pixels: N, H or W is 0."""
    return x.numel() == 0


def empty_result(shape: tuple, *tensors: torch.Tensor) -> torch.Tensor:
    """The empty output (``shape`` has a 0) of an op on an empty image, in the dtype and device of ``tensors[0]``;
    where a gradient is needed it is linked to ``tensors``, whose gradients are then zeros (as ``nn.Conv2d``'s on an
    empty batch)."""
    out = tensors[0].new_zeros(shape)
    if needs_grad(*tensors):
        out = out + sum(t.sum() for t in tensors) * 0
    return out
