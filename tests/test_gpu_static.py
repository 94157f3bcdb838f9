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
    assert not any(r.computes_1x1 for r in rows)  # the CUDA backend's 1x1s run in cuBLAS
    assert not any(r.tensor_core_insts for r in rows)


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
