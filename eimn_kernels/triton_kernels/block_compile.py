"""Ahead-of-time compile of the NHWC block kernels for a CUDA target (no GPU needed), as the launchers call them.

``block_specs(dtype, C)`` yields (name, kernel, signature, constexprs, num_warps) with block_config's GPU tiles and
EIMN's layer shapes for dim C (split 3/8, 1/8, 1/2; 5x5, 5x5 d2, 7x7 d3; hidden int(2.66 C); DFFM C // 4).
``compile_block(dtype, arch)`` returns {name: compiled kernel}. Pointers are marked 16-byte aligned
(``tt.divisibility``), as Triton's launcher specializes them at run time for torch's allocations: that is what
lets the compiler emit 128-bit accesses. Must run WITHOUT TRITON_INTERPRET=1.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

from . import block_config as cfg
from .block_common import halo_rows
from .block_molrcm import molrcm_mix_kernel, molrcm_region_kernel
from .block_sadffm import dffm_apply_kernel, dffm_global_kernel, sadffm_body_kernel
from .molrcm_config import pow2_block

__all__ = ["block_specs", "compile_block", "BLOCK_KERNELS"]

_TL = {"fp32": tl.float32, "fp16": tl.float16, "bf16": tl.bfloat16}
BLOCK_KERNELS = ("molrcm_region", "molrcm_mix", "sadffm_body", "dffm_global", "dffm_apply")
# pointer arguments in the activation dtype (the rest are float32)
_ACT_PTRS = {"X", "WqT", "R", "SCR", "WfT", "WvT", "WoT", "A", "WinT", "WoutT", "WlrT", "Y", "OUT"}
_FLOATS = {"EPS", "INV_HW"}


def _signature(fn, dtype: str, consts: dict) -> tuple[dict, dict]:
    sig, attrs = {}, {}
    for i, a in enumerate(fn.arg_names):
        if a in consts:
            sig[a] = "constexpr"
        elif a in _FLOATS:
            sig[a] = "fp32"
        elif a[0].isupper() and a not in ("H", "W", "TILES_W", "TPI", "NTILES", "NPROG", "NPIX", "HW"):
            sig[a] = f"*{dtype}" if a in _ACT_PTRS else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[a] = "i32"
    return sig, attrs


def block_specs(dtype: str = "fp32", C: int = 64):
    """(name, kernel, signature, attrs, constexprs, num_warps, CTAs per SM designed for) of the five block kernels
    for ``dtype``."""
    dc = "fp32" if dtype == "fp32" else "half"
    dot = _TL[dtype]
    prec = "tf32x3" if dtype == "fp32" else "ieee"
    bc = pow2_block(C)
    c1, c2, c3 = int(3 / 8 * C), int(1 / 8 * C), C - int(3 / 8 * C) - int(1 / 8 * C)
    hid, rr = int(C * 2.66), C // 4
    th, tw, w_reg, o_reg = cfg.REGION[dc]
    hp = halo_rows(th, tw, 2)
    region = dict(C=C, BC=bc, K0=5, TH=th, TW=tw, HP=hp, HM=min(hp, cfg.REGION_ROWS), DOT=dot, PREC=prec)
    th, tw, w_mix, o_mix = cfg.MIX[dc]
    mix = dict(C=C, BC=bc, C1=c1, C2=c2, C1P=pow2_block(c1), C2P=pow2_block(c2), C3P=pow2_block(c3), K1=5, D1=2,
               K2=7, D2=3, TH=th, TW=tw, DOT=dot, PREC=prec)
    th, tw, w_body, o_body, hc = cfg.BODY[dc]
    body = dict(C=C, BC=bc, HID=hid, HC=hc, RR=rr, BR=pow2_block(rr), TH=th, TW=tw,
                HP=halo_rows(th, tw, 1), DOT=dot, PREC=prec)
    bp, w_app, o_app = cfg.APPLY[dc]
    for name, fn, consts, nw, occ in (
            ("molrcm_region", molrcm_region_kernel, region, w_reg, o_reg),
            ("molrcm_mix", molrcm_mix_kernel, mix, w_mix, o_mix),
            ("sadffm_body", sadffm_body_kernel, body, w_body, o_body),
            ("dffm_global", dffm_global_kernel, dict(C=C, BC=bc, RR=rr, BR=pow2_block(rr)), 4, 1),
            ("dffm_apply", dffm_apply_kernel, dict(HAS_NORM=True, C=C, BC=bc, BP=bp), w_app, o_app)):
        sig, attrs = _signature(fn, dtype, consts)
        yield name, fn, sig, attrs, consts, nw, occ


def compile_block(dtype: str = "fp32", arch: int = 90, C: int = 64, names=None) -> dict:
    """{name: compiled kernel} of the block kernels for sm_<arch>."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_block needs TRITON_INTERPRET unset (the interpreter does not compile)")
    out = {}
    for name, fn, sig, attrs, consts, nw, _occ in block_specs(dtype, C):
        if names is not None and name not in names:
            continue
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
        out[name] = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": nw})
    return out
