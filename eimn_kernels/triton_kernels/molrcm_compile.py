"""Ahead-of-time compile check of the MOLRCM Triton kernels (no GPU needed).

``compile_all()`` compiles every kernel with the GPU tunables of molrcm_config for a CUDA target
(default sm_90, H100) and returns {name: ptx text}. Must run WITHOUT TRITON_INTERPRET=1.
``python -m eimn_kernels.triton_kernels.molrcm_compile [--ptxas-v]`` prints PTX sizes (and, with
--ptxas-v, ptxas register / spill usage of each kernel).
"""
from __future__ import annotations

import os
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

from . import molrcm_1x1 as k1x1
from . import molrcm_config as cfg
from . import molrcm_dw as kdw
from .molrcm_common import _reduce_rows_kernel

_TL = {"fp32": tl.float32, "fp16": tl.float16, "bf16": tl.bfloat16, "fp64": tl.float64}


def _signature(fn, ptr: str, consts: dict, acc_ptrs: tuple = (), acc: str = "fp32") -> dict:
    sig = {}
    for a in fn.arg_names:
        if a in consts:
            sig[a] = "constexpr"
        elif a.endswith("_ptr"):
            sig[a] = f"*{acc}" if a in acc_ptrs else f"*{ptr}"
        else:
            sig[a] = "i32"
    return sig


def kernel_specs(dtype: str = "fp32", C: int = 64, C_out: int | None = None):
    """(name, kernel, signature, constexprs) of every MOLRCM kernel for input dtype ``dtype``, C input
    channels and C_out output channels of the 1x1 kernels (default C, as in EIMN; blocks padded as the
    launchers do). C_out != C gives blocks of different shapes, as other models have."""
    acc = "fp64" if dtype == "fp64" else "fp32"
    ACC = _TL[acc]
    prec = "ieee" if dtype == "fp64" else cfg.FP32_DOT_PRECISION
    bc = max(16, triton.next_power_of_2(C))
    bo = max(16, triton.next_power_of_2(C if C_out is None else C_out))
    key = dtype if dtype in ("fp32", "fp64") else "half"
    fw = dict(BLOCK_P=cfg.GEMM_FWD_GPU[key][0], ACC=ACC, PREC=prec)
    bw = dict(BLOCK_P=cfg.GEMM_BWD_GPU[key][0], ACC=ACC, PREC=prec)
    th, tw, bdc, be = cfg.TILE_H_GPU, cfg.TILE_W_GPU, cfg.BLOCK_DC_GPU, cfg.BLOCK_E_GPU
    dwc = dict(TILE_H=th, TILE_W=tw, BLOCK_C=bdc, ACC=ACC)
    specs = [
        ("proj_qv_fwd", k1x1.proj_qv_fwd_kernel, (), dict(BLOCK_CI=bc, BLOCK_CQ=bo, BLOCK_CV=bo, **fw)),
        ("proj_qv_bwd", k1x1.proj_qv_bwd_kernel, ("part_ptr",), dict(BLOCK_CI=bc, BLOCK_CQ=bo, BLOCK_CV=bo, **bw)),
        ("gate_out_fwd", k1x1.gate_out_fwd_kernel, (), dict(BLOCK_C=bc, BLOCK_CO=bo, **fw)),
        ("gate_out_bwd", k1x1.gate_out_bwd_kernel, ("part_ptr",), dict(BLOCK_C=bc, BLOCK_CO=bo, **bw)),
        ("dw_mix_fwd", kdw.dw_mix_fwd_kernel, ("scratch_ptr",), dict(BLOCK_E=be, **dwc)),
        ("dw_conv_fwd", kdw.dw_conv_fwd_kernel, ("out_ptr",), dwc),
        ("dw_conv_bwd", kdw.dw_conv_bwd_kernel, ("part_ptr",), dwc),
        ("reduce_rows", _reduce_rows_kernel, ("part_ptr", "out_ptr"), dict(ACC=ACC, BLOCK=cfg.BLOCK_RED)),
    ]
    for name, fn, acc_ptrs, consts in specs:
        yield name, fn, _signature(fn, dtype, consts, acc_ptrs, acc), consts


def compile_all(dtype: str = "fp32", arch: int = 90, names=None, C: int = 64, C_out: int | None = None) -> dict:
    """Compile the kernels for CUDA sm_<arch> (1x1 kernels with channel blocks for C channels);
    returns {name: compiled kernel} (asm['ptx'] inside). C = 64 (EIMN) takes minutes on a CPU:
    the fp32 GEMMs become ~1.5 MB of unrolled FMA PTX."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_all needs TRITON_INTERPRET unset (the interpreter does not compile)")
    target = GPUTarget("cuda", arch, 32)
    out = {}
    for name, fn, sig, consts in kernel_specs(dtype, C, C_out):
        if names is not None and name not in names:
            continue
        key = dtype if dtype in ("fp32", "fp64") else "half"
        nw = (cfg.NUM_WARPS_DW if name.startswith("dw") else
              cfg.GEMM_BWD_GPU[key][1] if name.endswith("_bwd") else cfg.GEMM_FWD_GPU[key][1])
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts)
        out[name] = triton.compile(src, target=target, options={"num_warps": nw})
    return out


def _main(argv) -> int:
    import subprocess
    import tempfile
    for dtype in [a for a in argv if a in _TL] or ["fp32"]:
        for name, k in compile_all(dtype).items():
            line = f"{dtype} {name:14s} ptx {len(k.asm['ptx']):7d} chars, shared {k.metadata.shared} B"
            if "--ptxas-v" in argv:
                with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                    f.write(k.asm["ptx"])
                from triton.backends.nvidia.compiler import get_ptxas
                r = subprocess.run([get_ptxas(90).path, "--gpu-name", "sm_90a", "-v", f.name, "-o", os.devnull],
                                   capture_output=True, text=True)
                info = [ln.split("info    : ")[-1] for ln in (r.stdout + r.stderr).splitlines()
                        if "registers" in ln or "spill" in ln] or [r.stderr.strip()[-200:]]
                line += " | " + "; ".join(info)
                os.unlink(f.name)
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
