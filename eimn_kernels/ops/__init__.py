"""Fused ops (torch.library custom ops in the ``eimn_kernels`` namespace) and their functional API."""
from .lka import conv1x1, lka, lka_attention
from .molrcm import dw_mix, gate_out, proj_qv
from .norm import channel_layer_norm
from .sadffm import dffm_out, gated_dwconv, sadffm_layer

__all__ = ["dw_mix", "proj_qv", "gate_out", "gated_dwconv", "dffm_out", "sadffm_layer", "channel_layer_norm", "conv1x1",
           "lka", "lka_attention"]
