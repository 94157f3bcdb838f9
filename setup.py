"""Build eimn_kernels._C: C++ CPU kernels always, CUDA kernels with FORCE_CUDA=1 or a visible GPU. Package metadata:
pyproject.toml.

The CPU kernels use GCC/Clang vector extensions and OpenMP: with another compiler (MSVC) the extension is skipped
with a message and the package installs without it (the reference and Triton backends still work).
Environment: FORCE_CUDA=1, CUDA_HOME (the real toolkit, e.g. /usr/local/cuda-13.0),
TORCH_CUDA_ARCH_LIST (default "8.0;8.6;8.9;9.0" when building without a GPU), MAX_JOBS, EIMN_PORTABLE=1 (AVX2+FMA
instead of -march=native), CXX (the compiler whose family is checked).
"""
import glob
import os
import platform
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def compiler_family() -> str:
    """'gcc', 'clang' or 'other' for the C++ compiler the build will use (MSVC on Windows: 'other')."""
    if sys.platform == "win32":
        return "other"
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        return "other"
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.lower()
    except (OSError, subprocess.SubprocessError):
        return "other"
    return "clang" if "clang" in out else "gcc" if ("gcc" in out or "free software foundation" in out) else "other"


def ext_modules():
    family = compiler_family()
    if family == "other":
        print("eimn-kernels: no GCC/Clang C++ compiler found: building without the compiled extension "
              "(the reference and Triton backends still work)", file=sys.stderr)
        return []
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cpu_sources = _rel([os.path.join(ROOT, "csrc", "eimn_ops.cpp")] + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    cuda_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")) + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))
    with_cuda = os.environ.get("FORCE_CUDA", "0") == "1" or (torch.cuda.is_available() and torch.version.cuda)
    openmp = ["-fopenmp"]
    # torch >= 2.14 headers require C++20 (ATen.h: "#error C++20 or later"); older torch builds with C++17.
    tv = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    std = "-std=c++20" if tv >= (2, 14) else "-std=c++17"
    # -fno-trapping-math (as torch itself is built) lets GCC vectorise the clamped erf/exp loops of the CPU kernels.
    cxx = ["-O3", std, "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"] + openmp
    # The extension is built on the machine that runs it; EIMN_PORTABLE=1 targets any AVX2 x86-64.
    if os.environ.get("EIMN_PORTABLE", "0") == "1":
        cxx += ["-mavx2", "-mfma"]
    elif platform.machine().lower() in ("x86_64", "amd64"):
        # 64-byte vectors in the auto-vectorised loops too where the CPU has AVX-512 (GCC prefers 32 bytes there;
        # no effect without AVX-512): SADFFM forward / training step 4-5% faster at 4x64x64x64 (benchmarks.ab_builds).
        # Loops aligned to 64 bytes: the MOLRCM depthwise backward swung by 10% with the code layout of unrelated
        # changes; aligned, it stays at the fast end (benchmarks.ab_builds: 1.067).
        cxx += ["-march=native", "-mprefer-vector-width=512", "-falign-loops=64"]
    include_dirs = [os.path.join(ROOT, "csrc")]  # includes are spelled from csrc/: "cpu/...", "cuda/...", "common/..."
    if with_cuda and cuda_sources:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;8.6;8.9;9.0"
        return [CUDAExtension(
            "eimn_kernels._C", cpu_sources + cuda_sources, include_dirs=include_dirs,
            define_macros=[("EIMN_WITH_CUDA", None)], extra_link_args=openmp,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", std, "--use_fast_math",
                                                      "-U__CUDA_NO_HALF_OPERATORS__",
                                                      "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                                                      "-U__CUDA_NO_HALF_CONVERSIONS__", "-lineinfo"]})]
    return [CppExtension("eimn_kernels._C", cpu_sources, include_dirs=include_dirs,
                         extra_compile_args={"cxx": cxx}, extra_link_args=openmp)]


def cmdclass():
    from torch.utils.cpp_extension import BuildExtension
    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(ext_modules=ext_modules(), cmdclass=cmdclass())
