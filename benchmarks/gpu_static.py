"""Static facts of every GPU kernel, read from its compiled code without a GPU: registers, stack and local-memory
(spill) instructions, shared memory, tensor-core instructions, 128-bit global loads and stores.

CUDA: each ``csrc/cuda/*.cu`` compiled to a cubin with nvcc (``CUDA_HOME``, default /usr/local/cuda-13.0), the
same flags as setup.py. Triton: every MOLRCM, SADFFM and channel-LayerNorm kernel compiled for the target with the
GPU tunables (``molrcm_compile.kernel_specs``, ``tests/_sadffm_ptx.cases``). Both read with the ``cuobjdump``
that Triton ships (``--dump-resource-usage`` and ``-sass``).

    python -m benchmarks.gpu_static [--arch 90] [--no-cuda] [--no-triton] [--out benchmarks/results/gpu-static-sm90.md]
                                    [--json FILE]

Run it without TRITON_INTERPRET=1 (the Triton part compiles for a real target; it removes the variable and sets
EIMN_PTX_CUBIN=1 in its own process).

Columns: regs / stack bytes / local (LDL+STL instructions: spills or local arrays) / static shared bytes (as
cuobjdump reports them: on sm_90 they include the 1 KiB the system reserves per block) /
tensor-core instructions (HMMA, HGMMA, DMMA, IMMA) / 128-bit global loads and stores of all global loads (LDG,
cp.async LDGSTS, TMA) and stores. ``1x1``: the kernel computes a 1x1 convolution (a GEMM) itself (the per-layer CUDA
ops' 1x1s run in cuBLAS). Shared memory: static (cuobjdump) plus, for Triton, its dynamic shared memory; the CUDA
block kernels' dynamic shared memory is set at launch (block_*_kernels.cu: *_smem()).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

__all__ = ["KernelFacts", "cuobjdump", "facts_of_cubin", "cuda_kernels", "triton_kernels", "block_kernels",
           "to_markdown", "main"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda-13.0")
NVCC_FLAGS = ["-O3", "-std=c++17", "--use_fast_math", "-U__CUDA_NO_HALF_OPERATORS__",
              "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF_CONVERSIONS__"]
_TENSOR_CORE = re.compile(r"\b(HMMA|HGMMA|DMMA|IMMA)\b")


@dataclass
class KernelFacts:
    """One compiled kernel's static facts (see the module docstring)."""
    source: str
    kernel: str
    arch: int
    computes_1x1: bool
    regs: int
    stack: int
    local_insts: int
    shared: int
    tensor_core_insts: int
    ldg: int
    ldg128: int
    stg: int
    stg128: int


def cuobjdump() -> str:
    """The cuobjdump bundled with Triton (or on PATH)."""
    try:
        import triton
        p = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.path.exists(p):
            return p
    except ImportError:
        pass
    return "cuobjdump"


def _demangle(names: list[str]) -> dict[str, str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    except OSError:
        return {n: n for n in names}
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def _short(demangled: str) -> str:
    """'sadffm_gated_bwd_kernel<__half>' from the demangled signature (namespaces and arguments dropped)."""
    name = demangled.replace("(anonymous namespace)::", "").split("(")[0]
    depth, cut = 0, 0
    for i, ch in enumerate(name):  # the last '::' outside template brackets
        depth += ch == "<"
        depth -= ch == ">"
        if depth == 0 and name.startswith("::", i):
            cut = i + 2
    name = name[cut:]
    return re.sub(r"\s+", "", name).replace("void", "")


def facts_of_cubin(cubin: bytes, source: str, arch: int, is_1x1) -> list[KernelFacts]:
    """Facts of every kernel in ``cubin``; ``is_1x1(short_name) -> bool`` marks the 1x1 (GEMM) kernels."""
    tool = cuobjdump()
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    usage = {}
    for m in re.finditer(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res):
        usage[m.group(1)] = tuple(int(m.group(i)) for i in range(2, 6))
    bodies = {}
    for part in re.split(r"\n\s*Function : ", "\n" + sass)[1:]:
        name, _, body = part.partition("\n")
        bodies[name.strip()] = body
    names = sorted(set(usage) | set(bodies))
    dem = _demangle(names)
    out = []
    for n in names:
        regs, stack, shared, _local = usage.get(n, (0, 0, 0, 0))
        body = bodies.get(n, "")
        ins = [ln.split(";")[0] for ln in body.splitlines() if "/*" in ln and ";" in ln]
        # global loads: LDG, cp.async (LDGSTS) and TMA (UTMALDG, UBLKCP: bulk, counted as 128-bit); stores: STG
        ldg = [i for i in ins if re.search(r"\b(LDG|LDGSTS)\.", i) or re.search(r"\b(UTMALDG|UBLKCP)\b", i)]
        stg = [i for i in ins if re.search(r"\bSTG\.", i) or re.search(r"\bUTMASTG\b", i)]
        wide = re.compile(r"\.128\b|\bUTMA|\bUBLKCP")
        short = _short(dem[n])
        out.append(KernelFacts(
            source=source, kernel=short, arch=arch, computes_1x1=bool(is_1x1(short)), regs=regs, stack=stack,
            local_insts=sum(bool(re.search(r"\b(LDL|STL)\b", i)) for i in ins), shared=shared,
            tensor_core_insts=sum(bool(_TENSOR_CORE.search(i)) for i in ins),
            ldg=len(ldg), ldg128=sum(bool(wide.search(i)) for i in ldg), stg=len(stg),
            stg128=sum(bool(wide.search(i)) for i in stg)))
    return out


# CUDA kernels that compute a 1x1 convolution themselves (the NHWC block kernels, block_*_kernels.cu; the per-layer
# CUDA ops leave their 1x1s to cuBLAS).
CUDA_1X1 = ("molrcm_region_kernel", "molrcm_mix_kernel", "sadffm_body_kernel")


def cuda_kernels(arch: int = 90) -> list[KernelFacts]:
    """Facts of the kernels of every csrc/cuda/*.cu for sm_<arch>; ``computes_1x1`` for the NHWC block kernels'
    GEMM stages (the per-layer ops' 1x1s run in cuBLAS)."""
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc")
    if not os.path.exists(nvcc):
        raise FileNotFoundError(f"nvcc not found at {nvcc} (set CUDA_HOME)")
    srcs = sorted(f for f in os.listdir(os.path.join(ROOT, "csrc", "cuda")) if f.endswith(".cu"))
    out = []
    with tempfile.TemporaryDirectory() as d:
        for s in srcs:
            cubin = os.path.join(d, s + ".cubin")
            subprocess.run([nvcc, "-cubin", f"-arch=sm_{arch}", *NVCC_FLAGS, "-I", os.path.join(ROOT, "csrc"),
                            os.path.join(ROOT, "csrc", "cuda", s), "-o", cubin], check=True, capture_output=True)
            with open(cubin, "rb") as f:
                out += facts_of_cubin(f.read(), f"csrc/cuda/{s}", arch, lambda name: name.startswith(CUDA_1X1))
    return out


# Triton kernels that compute a 1x1 convolution (a GEMM over channels) in the kernel itself.
TRITON_1X1 = ("proj_qv_fwd", "proj_qv_bwd", "gate_out_fwd", "gate_out_bwd", "conv1x1", "wgrad", "dffm_y",
              "dffm_gate", "dffm_bwd_b", "dffm_bwd_c")  # "conv1x1" also covers conv1x1_act (triton_kernels/conv1x1)


def triton_kernels(arch: int = 90, dtypes=("fp32", "fp16")) -> list[KernelFacts]:
    """Facts of the Triton kernels (MOLRCM in each of ``dtypes``; the SADFFM and channel LayerNorm cases of
    tests/_sadffm_ptx.py) compiled for sm_<arch>."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget

    from eimn_kernels.triton_kernels import molrcm_compile, sadffm_config
    out = []
    for dt in dtypes:
        for name, k in molrcm_compile.compile_all(dt, arch=arch).items():
            out += [KernelFacts(**dict(asdict(f), kernel=f"{name}[{dt}]"))
                    for f in facts_of_cubin(k.asm["cubin"], "triton_kernels/molrcm", arch,
                                            lambda _n, name=name: name.startswith(TRITON_1X1))]
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    os.environ["EIMN_PTX_CUBIN"] = "1"  # _sadffm_ptx: keep the cubin stage
    import _sadffm_ptx as sp
    cfg = sadffm_config
    warps = {"conv1x1": cfg.GEMM_WARPS, "wgrad": cfg.WG_WARPS, "gated": cfg.DW_WARPS, "dw": cfg.DW_WARPS,
             "dffm": cfg.DFFM_WARPS, "cln": 4}
    for name, kernel, ptr, consts in sp.cases():
        sig = {}
        for a in kernel.arg_names:
            sig[a] = ("constexpr" if a in consts else "i32" if a in sp._INTS else "fp32" if a == "eps"
                      else sp._PTR[ptr])
        k = triton.compile(triton.compiler.ASTSource(kernel, sig, constexprs=consts),
                           target=GPUTarget("cuda", arch, 32), options={"num_warps": warps[name.split("_")[0]]})
        src = "triton_kernels/channel_norm" if name.startswith("cln") else "triton_kernels/sadffm"
        out += [KernelFacts(**dict(asdict(f), kernel=name))
                for f in facts_of_cubin(k.asm["cubin"], src, arch, lambda _n, name=name: name.startswith(TRITON_1X1))]
    out += _conv1x1_kernels(arch)
    out += block_kernels(arch)
    return out


# The NHWC whole-block inference kernels (triton_kernels/block_*.py) that compute 1x1 convolutions.
BLOCK_1X1 = ("molrcm_region", "molrcm_mix", "sadffm_body")


def block_kernels(arch: int = 90, dtypes=("fp32", "fp16", "bf16")) -> list[KernelFacts]:
    """The NHWC block kernels as their launchers compile them (block_compile: GPU tiles, EIMN's C = 64, pointers
    16-byte aligned). ``shared`` here adds Triton's dynamic shared memory (dot operand staging) to the static."""
    os.environ.pop("TRITON_INTERPRET", None)
    from eimn_kernels.triton_kernels.block_compile import compile_block
    out = []
    for dt in dtypes:
        for name, k in compile_block(dt, arch=arch).items():
            facts = facts_of_cubin(k.asm["cubin"], "triton_kernels/block", arch,
                                   lambda _n, name=name: name in BLOCK_1X1)
            out += [KernelFacts(**dict(asdict(f), kernel=f"{name}[{dt}]", shared=f.shared + k.metadata.shared))
                    for f in facts]
    return out


def _conv1x1_kernels(arch: int) -> list[KernelFacts]:
    """triton_kernels/conv1x1.py (large-kernel attention's 1x1 with its epilogue), fp32 and fp16, every epilogue on."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    from eimn_kernels.triton_kernels import conv1x1 as c1
    from eimn_kernels.triton_kernels import molrcm_config as mcfg
    from eimn_kernels.triton_kernels import sadffm_config as cfg
    out = []
    import torch
    for dt, ptr, dot, prec, tdt in (("fp32", "*fp32", tl.float32, mcfg.FP32_DOT_PRECISION, torch.float32),
                                    ("fp16", "*fp16", tl.float16, "ieee", torch.float16)):
        for name, kern, consts, ints in (
                ("conv1x1_act", c1.conv1x1_act_kernel,
                 dict(ACT=1, HAS_G=True, HAS_R=True, ACC=tl.float32, DOT=dot, PREC=prec, BO=cfg.GEMM_BO,
                      BC=cfg.GEMM_BC, BP=cfg.GEMM_BP), ("CIN", "COUT", "P")),
                ("conv1x1_dz", c1.conv1x1_dz_kernel, dict(ACT=1, HAS_G=True, ACC=tl.float32, BLOCK=1024),
                 ("COUT", "P", "TOTAL"))):
            sig = {a: "constexpr" if a in consts else "i32" if a in ints else ptr for a in kern.arg_names}
            k = triton.compile(triton.compiler.ASTSource(kern, sig, constexprs=consts),
                               target=GPUTarget("cuda", arch, 32),
                               options={"num_warps": c1.fwd_warps(tdt) if name == "conv1x1_act" else cfg.GEMM_WARPS})
            out += [KernelFacts(**dict(asdict(f), kernel=f"{name}[{dt}]"))
                    for f in facts_of_cubin(k.asm["cubin"], "triton_kernels/conv1x1", arch,
                                            lambda _n, name=name: name == "conv1x1_act")]
    return out


def to_markdown(rows: list[KernelFacts], title: str) -> str:
    """The table of ``rows`` with a summary line."""
    lines = [f"# {title}", "", __doc__.split("\n\n")[1].replace("\n", " "), "",
             "| source | kernel | 1x1 | regs | stack B | local insts | shared B | tensor-core insts | "
             "128-bit / all global loads | 128-bit / all global stores |", "|---|---|:-:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.source} | `{r.kernel}` | {'yes' if r.computes_1x1 else ''} | {r.regs} | {r.stack} "
                     f"| {r.local_insts} | {r.shared} | {r.tensor_core_insts} | {r.ldg128} / {r.ldg} "
                     f"| {r.stg128} / {r.stg} |")
    g = [r for r in rows if r.computes_1x1]
    lines += ["", f"{len(rows)} kernels; with local-memory instructions: {sum(r.local_insts > 0 for r in rows)}; "
              f"computing a 1x1: {len(g)}, of which on tensor cores: {sum(r.tensor_core_insts > 0 for r in g)}; "
              f"with any 128-bit global access: {sum(r.ldg128 + r.stg128 > 0 for r in rows)}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[KernelFacts]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA target sm_<arch> (default 90)")
    ap.add_argument("--no-cuda", action="store_true", help="Triton kernels only")
    ap.add_argument("--no-triton", action="store_true", help="CUDA kernels only")
    ap.add_argument("--out", help="write the markdown table there")
    ap.add_argument("--json", help="write the rows as JSON there")
    a = ap.parse_args(argv)
    rows = ([] if a.no_cuda else cuda_kernels(a.arch)) + ([] if a.no_triton else triton_kernels(a.arch))
    if a.json:
        with open(a.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)
    md = to_markdown(rows, f"GPU kernels, static facts for sm_{a.arch} (no GPU needed)")
    if a.out:
        with open(a.out, "w") as f:
            f.write(md)
        print(f"wrote {a.out}")
    else:
        print(md)
    return rows


if __name__ == "__main__":
    main()
