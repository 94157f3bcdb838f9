"""CPU backend: C++/OpenMP kernels of eimn_kernels._C (float32, float64)."""
from __future__ import annotations

import torch

from .. import _ext

SUPPORTED_DTYPES = (torch.float32, torch.float64)
# Ops whose forward can keep intermediates for the backward (NAME_forward_stash / NAME_backward_stash).
STASH_OPS = ("gated_dwconv", "dffm_out", "channel_layer_norm", "sadffm")


def available(device: torch.device) -> tuple[bool, str]:
    """CPU tensors, with the extension built."""
    if device.type != "cpu":
        return False, "the cpu backend runs on CPU tensors only"
    if not _ext.extension_loaded():
        return False, f"eimn_kernels._C is not built ({_ext.extension_error()})"
    return True, "C++ kernels"


def sadffm_forward(*args):
    """Whole SADFFM layer without a stash: the forward-only kernel."""
    return torch.ops.eimn_C.sadffm_infer_forward(*args)


def sadffm_backward(grad_out, *args):
    """Whole SADFFM layer backward without a stash (17 input tensors, eps): recomputes the stash first."""
    *tensors, eps = args
    _, stash = torch.ops.eimn_C.sadffm_forward_stash(*tensors, eps)
    return torch.ops.eimn_C.sadffm_backward_stash(grad_out, *tensors, stash, eps)


def __getattr__(name: str):
    # NAME_forward / NAME_backward (and NAME_forward_stash / NAME_backward_stash) map to
    # torch.ops.eimn_C.<the same name>, which the dispatcher sends to the CPU kernels.
    if name.endswith(("_forward", "_backward", "_forward_stash", "_backward_stash")):
        return getattr(torch.ops.eimn_C, name)
    raise AttributeError(name)
