"""Compile every SADFFM Triton kernel (and the channel LayerNorm's, which shares the DFFM LayerNorm) to PTX for
sm_90 (H100) without a GPU; run as a script by
tests/test_triton_sadffm.py (in a subprocess, without TRITON_INTERPRET). Prints one line per kernel;
with EIMN_PTX_CUBIN=1 it also runs ptxas and prints registers and spill stack per kernel."""
import os
import subprocess
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from eimn_kernels.triton_kernels import channel_norm as cn  # noqa: E402
from eimn_kernels.triton_kernels import sadffm_common as cm  # noqa: E402
from eimn_kernels.triton_kernels import sadffm_config as cfg  # noqa: E402
from eimn_kernels.triton_kernels import sadffm_dffm as df  # noqa: E402
from eimn_kernels.triton_kernels import sadffm_gated as gd  # noqa: E402

_INTS = {"HW", "CIN", "COUT", "P", "sw_o", "sw_c", "M", "K", "NT", "PER", "NITEMS", "HID", "H", "W", "C2", "C", "R"}
_PTR = {tl.float32: "*fp32", tl.float16: "*fp16", tl.bfloat16: "*bf16", tl.float64: "*fp64"}


def _skip_ptxas(*args):
    """Stage hook: stop after PTX (ptxas, the slow part, is skipped unless EIMN_PTX_CUBIN=1)."""
    if not args:
        return "skip-ptxas", "skip-ptxas"
    stages = args[1]
    stages["cubin"] = lambda src, metadata: b""


if os.environ.get("EIMN_PTX_CUBIN") != "1":
    triton.knobs.runtime.add_stages_inspection_hook = _skip_ptxas


def _resource_usage(cubin: bytes) -> str:
    """'REG:.. STACK:..' of a cubin, from the cuobjdump bundled with triton ('' if unavailable)."""
    import re
    import tempfile
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        except OSError:
            return ""
    return " ".join(re.findall(r"REG:\d+ STACK:\d+", out))


def compile_ptx(kernel, ptr_dtype, constexprs, num_warps):
    """PTX text of ``kernel`` for sm_90 with every pointer of ``ptr_dtype`` and the given constexprs."""
    fn = kernel
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in _INTS:
            sig[name] = "i32"
        elif name == "eps":
            sig[name] = "fp32"
        else:
            sig[name] = _PTR[ptr_dtype]
    src = ASTSource(fn, sig, constexprs=constexprs)
    asm = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm
    if asm.get("cubin"):  # EIMN_PTX_CUBIN=1: report registers / spill stack
        print(f"  {kernel.fn.__name__}: {_resource_usage(asm['cubin'])}", flush=True)
    return asm["ptx"]


def cases():
    f32 = dict(ACC=tl.float32, DOT=tl.float32, PREC="ieee")
    h16 = dict(ACC=tl.float32, DOT=tl.float16, PREC="ieee")
    b16tf = dict(ACC=tl.float32, DOT=tl.float32, PREC="tf32")
    f64 = dict(ACC=tl.float64, DOT=tl.float64, PREC="ieee")
    gemm = dict(BO=cfg.GEMM_BO, BC=cfg.GEMM_BC, BP=cfg.GEMM_BP)
    wg = dict(BM=cfg.WG_BM, BK=cfg.WG_BK, BP=cfg.WG_BP)
    dw = dict(K=3, BH=cfg.DW_BH, BP=cfg.DW_BP)
    dwb = dict(K=3, BH=cfg.DW_BH, BP=cfg.DW_BWD_BP)
    dq = dict(BC=64, BR=16, BP=cfg.DFFM_BP)
    return [
        ("conv1x1_fp16", cm.conv1x1_kernel, tl.float16, dict(HAS_BIAS=True, **h16, **gemm)),
        ("conv1x1_fp32", cm.conv1x1_kernel, tl.float32, dict(HAS_BIAS=False, **f32, **gemm)),
        ("wgrad_bf16", cm.wgrad_kernel, tl.bfloat16, dict(HAS_B=True, **b16tf, **wg)),
        ("gated_dw_fwd_fp16", gd.gated_dw_fwd_kernel, tl.float16, dict(ACC=tl.float32, **dw)),
        ("gated_dw_bwd_fp32", gd.gated_dw_bwd_kernel, tl.float32, dict(ACC=tl.float32, KKP=16, **dwb)),
        ("dw_transpose_fp64", gd.dw_transpose_kernel, tl.float64, dict(ACC=tl.float64, **dw)),
        ("dffm_y_bf16", df.dffm_y_kernel, tl.bfloat16,
         dict(RDT=tl.bfloat16, ACC=tl.float32, DOT=tl.bfloat16, PREC="ieee", BC=64, BH=cfg.DFFM_BH,
              BP=cfg.DFFM_BP)),
        ("dffm_gate_fp16", df.dffm_gate_kernel, tl.float16, dict(**b16tf, **dq)),
        ("dffm_bwd_b_fp64", df.dffm_bwd_b_kernel, tl.float64, dict(**f64, **dq)),
        ("dffm_bwd_c_fp32", df.dffm_bwd_c_kernel, tl.float32, dict(**f32, **dq)),
        ("cln_fwd_bf16", cn._cln_fwd_kernel, tl.bfloat16, dict(ACC=tl.float32, BC=64, BP=cn.BLOCK_P)),
        ("cln_bwd_fp32", cn._cln_bwd_kernel, tl.float32, dict(ACC=tl.float32, BC=64, BP=cn.BLOCK_P)),
    ]


if __name__ == "__main__":
    import time
    ok = True
    warps = {"conv1x1": cfg.GEMM_WARPS, "wgrad": cfg.WG_WARPS, "gated": cfg.DW_WARPS, "dw": cfg.DW_WARPS,
             "dffm": cfg.DFFM_WARPS, "cln": 4}
    for name, kernel, dt, cx in cases():
        t = time.time()
        try:
            ptx = compile_ptx(kernel, dt, cx, warps[name.split("_")[0]])
            good = ".target sm_90" in ptx and ".entry" in ptx
            print(f"{name}: {'OK' if good else 'NO PTX'} {len(ptx)} chars {time.time() - t:.1f}s", flush=True)
            ok &= good
        except Exception as e:  # report and go on to the next kernel
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
            ok = False
    sys.exit(0 if ok else 1)
