"""Static checks of the GPU kernels' compiled code, here, without a GPU (benchmarks/gpu_static.py): every CUDA kernel
for sm_90 and sm_80, every Triton kernel for sm_90.

What holds today is asserted; what does not yet hold is named, kernel by kernel, in the KNOWN_* sets (the GPU
redesign's to-do list: see docs/gpu-kernels.md): a kernel that newly spills or a new 1x1 kernel off the tensor
cores fails, and so does a listed kernel that no longer needs its entry (the list only shrinks).
Table: `python -m benchmarks.gpu_static --out benchmarks/results/gpu-static-sm90.md`.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_static

# Kernels whose SASS has local-memory instructions (register spills, or a local array).
KNOWN_LOCAL = {
    "sadffm_reduce_partials_kernel<double>",      # CUDA SADFFM (both .cu files): an 8-byte stack slot
    "sadffm_dffm_global_grad_kernel<double>",     # CUDA SADFFM: 8 bytes
    "sadffm_dffm_global_grad_kernel<float>",      # CUDA SADFFM: 8 bytes
    "proj_qv_bwd[fp32]", "gate_out_bwd[fp32]",    # Triton MOLRCM backward 1x1: 255 registers, hundreds of LDL/STL
    "proj_qv_bwd[fp16]", "gate_out_bwd[fp16]", "gate_out_fwd[fp16]",
}
# Triton kernels computing a 1x1 convolution without tensor-core instructions (fp32 dots in 'ieee' precision).
KNOWN_NO_TENSOR_CORES = {"conv1x1_fp32", "dffm_bwd_c_fp32"}

needs_nvcc = pytest.mark.skipif(not os.path.exists(os.path.join(gpu_static.CUDA_HOME, "bin", "nvcc")),
                                reason=f"nvcc not found under {gpu_static.CUDA_HOME} (set CUDA_HOME)")
needs_cuobjdump = pytest.mark.skipif(shutil.which(gpu_static.cuobjdump()) is None and
                                     not os.path.exists(gpu_static.cuobjdump()), reason="no cuobjdump")


def _check_common(rows, arch):
    assert rows and all(r.arch == arch for r in rows)
    for r in rows:
        assert 0 < r.regs <= 255, r
        assert r.shared <= 227 * 1024, r  # static shared memory within the sm_90 per-block limit
    local = {r.kernel for r in rows if r.local_insts > 0}
    return local


@needs_nvcc
@needs_cuobjdump
@pytest.mark.parametrize("arch", [90, 80])
def test_cuda_kernels(arch):
    rows = gpu_static.cuda_kernels(arch)
    names = {r.kernel for r in rows}
    for k in ("dw_mix_forward_kernel<float>", "sadffm_gated_fwd_kernel<__half>", "sadffm_dffm_apply_kernel<double>"):
        assert k in names, sorted(names)
    local = _check_common(rows, arch)
    known = {k for k in KNOWN_LOCAL if "[" not in k and "_fp" not in k}
    assert local <= known, f"new local-memory use: {sorted(local - known)}"
    if arch == 90:
        assert local == known, f"no longer spilling, drop from KNOWN_LOCAL: {sorted(known - local)}"
    # the per-layer ops' 1x1s run in cuBLAS; the NHWC block kernels' GEMM stages use tensor cores in every dtype
    gemm = [r for r in rows if r.computes_1x1]
    assert {r.kernel for r in gemm} == {f"{k}<{t}>" for k in gpu_static.CUDA_1X1
                                        for t in ("float", "__half", "__nv_bfloat16")}, sorted(r.kernel for r in gemm)
    assert all(r.tensor_core_insts > 0 for r in gemm), [r for r in gemm if not r.tensor_core_insts]
    assert not any(r.tensor_core_insts for r in rows if not r.computes_1x1)
    # the block kernels' activation stores are 16-byte vectors; launch bounds of 256 threads: <= 255 registers
    for r in rows:
        if r.kernel.startswith(("molrcm_region_kernel", "molrcm_mix_kernel", "dffm_apply_kernel")):
            assert r.stg128 == r.stg > 0, r


@needs_cuobjdump
def test_triton_kernels(tmp_path):
    pytest.importorskip("triton")
    # in a process of its own: compiling for a real target needs TRITON_INTERPRET unset
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "rows.json"
    subprocess.run([sys.executable, "-m", "benchmarks.gpu_static", "--no-cuda", "--json", str(out)], check=True,
                   env=env, cwd=gpu_static.ROOT, capture_output=True)
    rows = [gpu_static.KernelFacts(**r) for r in json.loads(out.read_text())]
    local = _check_common(rows, 90)
    known = {k for k in KNOWN_LOCAL if "[" in k or "_fp" in k}
    assert local == known, f"new: {sorted(local - known)}; no longer: {sorted(known - local)}"
    gemm = [r for r in rows if r.computes_1x1]
    assert len(gemm) >= 10
    off = {r.kernel for r in gemm if r.tensor_core_insts == 0}
    assert off == KNOWN_NO_TENSOR_CORES, f"new: {sorted(off - KNOWN_NO_TENSOR_CORES)}; " \
                                         f"no longer: {sorted(KNOWN_NO_TENSOR_CORES - off)}"
    # the fp32 MOLRCM 1x1s use tf32x3 dots: TF32 tensor-core MMA in fp32
    assert all(r.tensor_core_insts > 0 for r in gemm if r.kernel.endswith("[fp32]"))


@needs_cuobjdump
def test_block_kernels_budgets(tmp_path):
    """The NHWC block kernels (triton_kernels/block_*.py), fp32 / fp16 / bf16 as launched on an H100: no local
    memory; every 1x1 kernel on tensor cores (fp32 as 3xTF32); registers x threads and shared memory within an sm_90
    SM for the CTAs per SM each is designed for (block_config); the streaming kernel's global accesses 128-bit."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "block.json"
    code = ("import json, sys; from dataclasses import asdict; from benchmarks import gpu_static as g; "
            "json.dump([asdict(r) for r in g.block_kernels()], open(sys.argv[1], 'w'))")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, cwd=gpu_static.ROOT,
                   capture_output=True)
    rows = {r["kernel"]: gpu_static.KernelFacts(**r) for r in json.loads(out.read_text())}
    from eimn_kernels.triton_kernels.block_compile import BLOCK_KERNELS, block_specs
    for dt in ("fp32", "fp16", "bf16"):
        for name, _fn, _sig, _attrs, _consts, warps, per_sm in block_specs(dt):
            r = rows[f"{name}[{dt}]"]
            assert r.local_insts == 0 and r.stack == 0, r
            assert r.regs * 32 * warps * per_sm <= 65536, (r, warps, per_sm)
            assert r.shared * per_sm <= 227 * 1024, (r, per_sm)
            assert r.computes_1x1 == (name in gpu_static.BLOCK_1X1)
            if r.computes_1x1:
                assert r.tensor_core_insts > 0, r
        # dffm_apply streams a and y in, out out: every one of those accesses a 16-byte vector (the per-pixel
        # scalars a_loc and k are the remaining, narrower loads)
        from eimn_kernels.triton_kernels import block_config as cfg
        bp, warps, _ = cfg.APPLY[cfg.dtype_class({"fp32": torch.float32}.get(dt, torch.float16))]
        per_thread = bp * 64 * (4 if dt == "fp32" else 2) // (16 * 32 * warps)
        apply = rows[f"dffm_apply[{dt}]"]
        assert apply.stg128 == apply.stg == per_thread and apply.ldg128 >= 2 * per_thread, apply
    assert {k.split("[")[0] for k in rows} == set(BLOCK_KERNELS)


def test_triton_block_scratch_reads_are_coherent():
    """The persistent Triton block kernels read back what their own program wrote to its scratch slot after a
    barrier: those loads must not take the non-coherent (read-only, ld.global.nc) path, and the barriers must be
    there (bar.sync) around every slot write."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import re; from eimn_kernels.triton_kernels.block_compile import compile_block\n"
            "for dt in ('fp32', 'fp16'):\n"
            "    for n, k in compile_block(dt, names=['molrcm_region', 'sadffm_body']).items():\n"
            "        p = k.asm['ptx']\n"
            "        print(dt, n, len(re.findall(r'ld\\.global\\.nc', p)), len(re.findall(r'bar\\.sync|barrier\\.sync', p)))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=gpu_static.ROOT, capture_output=True,
                         text=True).stdout.split("\n")
    rows = [ln.split() for ln in out if ln.strip()]
    assert len(rows) == 4
    for dt, name, nc, bars in rows:
        assert int(nc) == 0, f"{name}[{dt}]: non-coherent loads"
        assert int(bars) >= 2, f"{name}[{dt}]: barriers missing"
