"""eimn-kernels: fused CPU / Triton / CUDA kernels for EIMN's MOLRCM and SADFFM layers.

Functional ops (NCHW tensors, ``backend='auto'|'reference'|'cpu'|'triton'|'cuda'``):
``dw_mix``, ``proj_qv``, ``gate_out`` (MOLRCM) and ``gated_dwconv``, ``dffm_out`` (SADFFM); ``sadffm_layer``
(the whole SADFFM layer: one kernel that never writes the hidden tensor when no gradient is needed);
``channel_layer_norm`` (EIMN's LayerNorm between blocks, on NCHW). Modules: ``MOLRCM``, ``SADFFM``,
``ChannelLayerNorm``. Model surgery: ``fuse``, ``optimize_for_inference``. The CPU kernels' buffer
cache: ``cpu_cache_info``, ``empty_cpu_cache``; the CPU's bfloat16 GEMM engine (``optimize_for_inference(...,
precision="bf16")``): ``bf16_engine``, ``require_bf16_engine``; the ISA level the CPU kernels run at
(``EIMN_CPU_ISA`` forces one): ``cpu_isa``, ``cpu_isa_info``.
"""
from . import _ext, reference
from ._ext import cpu_cache_info, cpu_isa, cpu_isa_info, empty_cpu_cache
from .cpu_bf16 import bf16_engine, require_bf16_engine
from .backends import BACKENDS, available_backends, backend_status, resolve_backend
from .fuse import fuse
from .inference import optimize_for_inference
from .lka_modules import LKA, LKAAttention
from .modules import MOLRCM, SADFFM, ChannelLayerNorm
from .ops import (channel_layer_norm, conv1x1, dffm_out, dw_mix, gate_out, gated_dwconv, lka, lka_attention, proj_qv,
                  sadffm_layer)

__version__ = "0.1.0"

__all__ = ["BACKENDS", "available_backends", "backend_status", "resolve_backend", "fuse", "optimize_for_inference",
           "MOLRCM", "SADFFM", "ChannelLayerNorm", "LKA", "LKAAttention", "channel_layer_norm", "dw_mix", "proj_qv", "gate_out",
           "gated_dwconv", "dffm_out", "sadffm_layer", "conv1x1", "lka", "lka_attention",
           "reference", "cpu_cache_info", "empty_cpu_cache", "bf16_engine", "require_bf16_engine", "cpu_isa",
           "cpu_isa_info"]
