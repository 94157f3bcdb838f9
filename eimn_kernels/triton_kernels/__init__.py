"""Triton kernels of the fused ops (the ``triton`` backend).

Each op NAME has ``NAME_forward`` / ``NAME_backward`` with the argument order of the
eimn_C schemas in csrc/eimn_ops.cpp.
"""
from .molrcm import (dw_mix_backward, dw_mix_forward, gate_out_backward, gate_out_forward,  # noqa: F401
                     proj_qv_backward, proj_qv_forward)
from .sadffm import (dffm_out_backward, dffm_out_forward, gated_dwconv_backward,  # noqa: F401
                     gated_dwconv_forward)
