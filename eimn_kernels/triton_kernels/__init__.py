"""Triton kernels of the fused ops (the ``triton`` backend).

``molrcm.py`` holds dw_mix / proj_qv / gate_out and ``sadffm.py`` gated_dwconv / dffm_out,
each with ``NAME_forward`` / ``NAME_backward`` taking the arguments of the eimn_C
schemas in csrc/eimn_ops.cpp, in that order.
"""
