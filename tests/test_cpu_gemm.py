"""The CPU GEMM kernels (csrc/cpu/cpu_gemm.h) against plain fma loops, bitwise, on both micro-kernels.

The extension's kernels run at one ISA level per process (the best this CPU has, tests/test_cpu_isa.py runs the
others in subprocesses); this file checks both micro-kernels (AVX-512 or AVX2) directly. tests/native/gemm_check.cpp includes the torch-free header directly and is
compiled here twice: for AVX2 + FMA and for the native target; each binary checks every GEMM entry point on
float and double over shapes with remainder rows, partial panels and multi-block pixel reductions.
"""
import os
import platform
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "tests", "native", "gemm_check.cpp")
CXX = shutil.which("g++") or shutil.which("c++")
X86 = platform.machine() in ("x86_64", "AMD64")

TARGETS = {"avx2": ["-mavx2", "-mfma"], "native": ["-march=native"]}


@pytest.mark.skipif(CXX is None, reason="no C++ compiler on PATH")
@pytest.mark.parametrize("target", list(TARGETS))
def test_gemm_kernels_bitwise_equal_to_fma_loops(target, tmp_path):
    if target == "avx2" and not X86:
        pytest.skip("the AVX2 micro-kernel is x86-only")
    exe = tmp_path / f"gemm_check_{target}"
    flags = ["-O3", "-std=c++17", "-ffp-contract=fast", *TARGETS[target]]
    subprocess.run([CXX, *flags, "-I", os.path.join(ROOT, "csrc"), "-o", str(exe), SRC], check=True,
                   capture_output=True, text=True, timeout=600)
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    summary = r.stdout.strip().splitlines()[-1]
    assert ", 0 failures" in summary, summary
    if target == "avx2":
        assert "kMR 6:" in summary, summary  # the AVX2 path really was the one compiled
