"""Eval-only folding of EIMN blocks (and VAN blocks, lka_inference.py): exact algebra that removes work at inference
time.

* BatchNorm (eval: per-channel affine) before MOLRCM folds into proj_query / proj_value,
  and before SADFFM into linear_in.
* layer_scale_1 folds into MOLRCM's last 1x1 (``out``).
* layer_scale_2 cannot enter SADFFM (its DFFM LayerNorm reads the unscaled y), so the block
  applies it in one ``addcmul`` with the residual.
The folded model holds new parameters (its state_dict differs); keep the original for saving.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .cpu_bf16 import mark_bf16, require_bf16_engine
from .fuse import fuse, is_molrcm, is_sadffm
from .inference_fold import bn_affine, fold_input_affine, fold_output_scale
from .lka_inference import fold_conv_bn, fold_van_block, is_van_block
from .modules import MOLRCM, SADFFM, apply_channel_norm
from .stem_conv import use_stem_convs
from .tail_conv import use_tail_convs

__all__ = ["optimize_for_inference", "FoldedEIMNBlock", "bn_affine"]


class FoldedEIMNBlock(nn.Module):
    """Inference EIMN block: x + attn'(x), then x + ls2 * mlp'(x), with BN and ls1 folded in; with ``norm`` (the
    model's LayerNorm after the block, nn.LayerNorm(C) or ChannelLayerNorm) that too.

    x: (N, dim, H, W) -> (N, dim, H, W). Built by :func:`optimize_for_inference`. On CPU without autograd the first
    residual runs in the MOLRCM kernel's last epilogue (MOLRCM.runs_residual), the second, ls2 and the LayerNorm in
    the fused SADFFM kernel's last pass (SADFFM.runs_block_tail).
    """

    def __init__(self, attn: nn.Module, mlp: nn.Module, layer_scale_2: torch.Tensor, norm: nn.Module | None = None):
        super().__init__()
        self.attn, self.mlp = attn, mlp
        self.layer_scale_2 = nn.Parameter(layer_scale_2.detach().clone(), requires_grad=False)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            x = x + self.attn(x)
            return apply_channel_norm(self.norm, torch.addcmul(x, self.layer_scale_2[:, None, None], self.mlp(x)))
        # No autograd: both residual sums go into attn's fresh output (same values: a + x == x + a), so the block
        # allocates no image-sized tensor of its own (at 640x360 each one is 59 MB of fresh pages); the first in the
        # MOLRCM kernel's last epilogue where it runs (no pass of its own).
        if isinstance(self.attn, MOLRCM) and self.attn.runs_residual(x):
            a = self.attn(x, residual=x)
        else:
            a = self.attn(x)
            a.add_(x)
        if isinstance(self.mlp, SADFFM) and self.mlp.runs_block_tail(a, self.norm):
            return self.mlp(a, tail=(self.layer_scale_2, self.norm))
        return apply_channel_norm(self.norm, a.addcmul_(self.layer_scale_2[:, None, None], self.mlp(a)))


def _attach_norms(model: nn.Module) -> int:
    """Move the LayerNorm after each folded block of an EIMN ``model`` (eimn.model.EIMN: ``block<i>`` holding one
    FoldedEIMNBlock, then ``norm<i>``) into the block, leaving a FusedAway in its place, so that the CPU kernels
    apply it in the SADFFM's last pass. Returns the number moved."""
    from .nhwc import FusedAway
    n = 0
    names = model.channel_norm_names() if hasattr(model, "channel_norm_names") else []
    for i, norm_name in enumerate(names, start=1):
        holder, norm = getattr(model, f"block{i}", None), getattr(model, norm_name, None)
        if (not isinstance(holder, nn.Sequential) or len(holder) != 1 or not isinstance(holder[0], FoldedEIMNBlock)
                or holder[0].norm is not None or norm is None or isinstance(norm, FusedAway)):
            continue
        holder[0].norm = norm
        setattr(model, norm_name, FusedAway())
        n += 1
    return n


def _is_block(m: nn.Module) -> bool:
    return (all(hasattr(m, n) for n in ("norm1", "attn", "norm2", "mlp", "layer_scale_1", "layer_scale_2"))
            and isinstance(m.norm1, nn.BatchNorm2d) and isinstance(m.norm2, nn.BatchNorm2d)
            and is_molrcm(m.attn) and is_sadffm(m.mlp))


@torch.no_grad()
def _fold_block(block: nn.Module, backend: str, fused: bool = True) -> FoldedEIMNBlock:
    attn, mlp = block.attn, block.mlp
    if fused:
        attn = attn if isinstance(attn, MOLRCM) else MOLRCM.from_module(attn, backend)
        mlp = mlp if isinstance(mlp, SADFFM) else SADFFM.from_module(mlp, backend)
        attn.backend = mlp.backend = backend
    s1, t1 = bn_affine(block.norm1)
    fold_input_affine(attn.proj_query[0], s1, t1)
    fold_input_affine(attn.proj_value[0], s1, t1)
    fold_output_scale(attn.out, block.layer_scale_1)
    s2, t2 = bn_affine(block.norm2)
    fold_input_affine(mlp.linear_in, s2, t2)
    return FoldedEIMNBlock(attn, mlp, block.layer_scale_2)


def _fold_tree(model: nn.Module, backend: str, fused: bool = True) -> int:
    """Fold every EIMN block, VAN block and (in nn.Sequentials) Conv2d + BatchNorm2d pair below ``model``."""
    n = 0
    if isinstance(model, nn.Sequential):
        n += fold_conv_bn(model)
    for name, child in list(model.named_children()):
        if _is_block(child):
            setattr(model, name, _fold_block(child, backend, fused))
            n += 1
        elif is_van_block(child):
            setattr(model, name, fold_van_block(child, fused, backend))
            n += 1
        else:
            n += _fold_tree(child, backend, fused)
    return n


def _check_bf16(model: nn.Module, fused: bool, backend: str) -> None:
    """precision="bf16" asks for the CPU path's bfloat16 GEMMs: a fused model on the CPU, backend auto or cpu, with
    the engine."""
    if not fused:
        raise ValueError("precision='bf16' runs the fused layers' bfloat16 GEMMs: it needs fused=True")
    if backend not in ("auto", "cpu"):
        raise ValueError(f"precision='bf16' runs the cpu backend's bfloat16 GEMMs: backend must be 'auto' or 'cpu', "
                         f"got {backend!r}")
    p = next(model.parameters(), None)
    if p is not None and p.device.type != "cpu":
        raise ValueError(f"precision='bf16' is the CPU path (the model is on {p.device}); on a GPU run a bfloat16 "
                         "model instead: model.to(torch.bfloat16)")
    require_bf16_engine()


def _wants_nhwc(model: nn.Module, backend: str, fused: bool) -> bool:
    """The default of ``nhwc``: a fused model on a CUDA device, backend auto / cuda / triton, with block kernels
    for it (the compiled CUDA ones, or Triton importable)."""
    p = next(model.parameters(), None)
    if not fused or backend not in ("auto", "cuda", "triton") or p is None or p.device.type != "cuda":
        return False
    from .nhwc import cuda_block_available, triton_runs_on
    return (backend != "triton" and cuda_block_available()) or triton_runs_on("cuda")


def optimize_for_inference(model: nn.Module, backend: str = "auto", inplace: bool = False,
                           fused: bool = True, cuda_graphs: bool = False, max_graphs: int = 8,
                           nhwc: bool | None = None, fp32_dot: str = "tf32x3", precision: str = "fp32") -> nn.Module:
    """Eval-only copy of ``model`` with every EIMN block folded and MOLRCM/SADFFM fused.

    Outputs equal the eval-mode original within fp32 rounding. The result is in eval mode,
    its parameters do not require grad, and its state_dict differs from the original's.
    ``inplace=True`` rewrites ``model`` itself. ``fused=False`` folds only and keeps the model's own (eager)
    layers: plain PyTorch operators, what an ONNX export needs (eimn.export). ``cuda_graphs=True`` returns it
    wrapped in :class:`~eimn_kernels.graphs.CUDAGraphed`: on CUDA inputs without autograd each input shape's
    forward is captured once and replayed (``max_graphs`` shapes kept). ``nhwc`` (default: on for a fused model on
    a CUDA device) runs every EIMN block and the LayerNorm after it as the five NHWC kernels of
    :mod:`eimn_kernels.nhwc` (tensor-core 1x1s, channels_last between blocks; CUDA for backend cuda / auto where
    built, Triton for triton or other widths), their float32 GEMMs as 3xTF32 (``fp32_dot="tf32x3"``, ~1e-6
    relative) or one TF32 product (``"tf32"``, ~1e-3, eager cuDNN's default); those blocks fall back to the folded
    layers for CPU tensors, float64 or autograd. Other fused blocks take the LayerNorm after them
    (FoldedEIMNBlock.norm; a FusedAway stands in the model's ``norm<i>``): on CPU without autograd the SADFFM
    kernel applies the block's second residual, ls2 and that LayerNorm in its last pass; the image stem (a 3x3
    conv of <= 4 channels, EIMN's head) becomes a :class:`~eimn_kernels.stem_conv.StemConv2d` (im2col + the CPU
    GEMM on CPU without autograd). ``precision="bf16"``
    (fused, CPU): the 1x1 GEMMs of every MOLRCM and SADFFM layer in bfloat16 with float32 sums on float32 CPU inputs (:mod:`eimn_kernels.cpu_bf16`; RuntimeError on a
    CPU without AVX512-BF16); everything else, and the model's inputs and outputs, stay float32. On a GPU, run a
    bfloat16 model instead (``model.to(torch.bfloat16)``).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16":
        _check_bf16(model, fused, backend)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if _is_block(model):
        model = _fold_block(model, backend, fused)
    else:
        _fold_tree(model, backend, fused)
        if fused:
            fuse(model, backend=backend)
        if nhwc or (nhwc is None and _wants_nhwc(model, backend, fused)):
            from .nhwc import use_nhwc_blocks
            use_nhwc_blocks(model, backend if backend in ("cuda", "triton") else "auto", fp32_dot)
        if fused:
            _attach_norms(model)
            if backend in ("auto", "cpu"):  # the C++ CPU passes for the image stem and the tail + upsampler
                use_stem_convs(model)
                use_tail_convs(model)
    if precision == "bf16":
        mark_bf16(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if cuda_graphs:
        from .graphs import CUDAGraphed
        return CUDAGraphed(model.eval(), max_graphs=max_graphs).eval()
    return model.eval()
