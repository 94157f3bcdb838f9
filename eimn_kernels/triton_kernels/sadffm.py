"""Triton backend of the SADFFM ops (eimn_C schemas gated_dwconv_* and dffm_out_*, same argument order).

Inputs are contiguous NCHW tensors of one dtype (float32, float16, bfloat16 or float64) on a CUDA device,
or CPU tensors under TRITON_INTERPRET=1. Accumulation is fp32 (fp64 for fp64); outputs are in the input
dtype; weight gradients are reduced in the accumulator dtype from per-program partials in a fixed order
(deterministic, no atomics) and then cast. Kernels: sadffm_gated.py, sadffm_dffm.py, sadffm_common.py;
block sizes: sadffm_config.py.
"""
from .sadffm_dffm import dffm_out_backward, dffm_out_forward
from .sadffm_gated import gated_dwconv_backward, gated_dwconv_forward

__all__ = ["gated_dwconv_forward", "gated_dwconv_backward", "dffm_out_forward", "dffm_out_backward"]
