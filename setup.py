"""Build eimn_kernels._C: C++ CPU kernels always, CUDA kernels with FORCE_CUDA=1 or a visible GPU. Package metadata:
pyproject.toml.

The CPU kernels use GCC/Clang vector extensions and OpenMP: with another compiler (MSVC) the extension is skipped
with a message and the package installs without it (the reference and Triton backends still work).
Environment: FORCE_CUDA=1, CUDA_HOME (the real toolkit, e.g. /usr/local/cuda-13.0),
TORCH_CUDA_ARCH_LIST (default "8.0;8.6;8.9;9.0" when building without a GPU), MAX_JOBS, EIMN_NATIVE=1 (one
level of CPU kernels compiled with -march=native for this machine, instead of the avx2 and avx512 levels: faster to
build, for development), CXX (the compiler whose family is checked).

CPU kernels on x86-64: one extension for every x86-64 CPU. The kernel translation units (csrc/cpu/*_cpu.cpp) are
compiled once per ISA level (CPU_LEVELS) into their own namespace (csrc/cpu/cpu_isa.h) and linked after the
baseline objects (eimn_ops.cpp, csrc/cpu/cpu_dispatch.cpp: no level flags), so that an inline function both
instantiate keeps the baseline (or lowest level's) copy; cpu_dispatch.cpp registers the level the CPU runs best,
or EIMN_CPU_ISA's, when the library loads.
"""
import glob
import os
import platform
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


# The ISA levels of the CPU kernels (x86-64): flags after the common ones. avx512 keeps what -march=native gave on
# the Sapphire/Emerald Rapids development machine: 64-byte vectors in the auto-vectorised loops too (GCC prefers 32
# bytes; SADFFM forward / training step 4-5% faster at 4x64x64x64, benchmarks.ab_builds) and loops aligned to 64
# bytes (the MOLRCM depthwise backward swung by 10% with the code layout of unrelated changes; aligned it stays at
# the fast end: 1.067). -mtune=generic is what GCC 12's -march=native tunes for there: with -mtune=icelake-server or
# sapphirerapids the MOLRCM depthwise forward ran 4% slower than -march=native (t_native/t_level 0.961, 0.964);
# generic matches it on every op (0.96-1.02, all confidence intervals but one containing 1).
CPU_LEVELS = {
    "avx2": ["-march=x86-64-v3", "-mtune=generic"],
    "avx512": ["-march=x86-64-v4", "-mtune=generic", "-mprefer-vector-width=512", "-falign-loops=64"],
}


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

    kernel_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*_cpu.cpp")))
    base_sources = _rel([os.path.join(ROOT, "csrc", "eimn_ops.cpp"), os.path.join(ROOT, "csrc", "cpu", "cpu_dispatch.cpp")])
    cuda_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")) + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))
    depends = _rel(glob.glob(os.path.join(ROOT, "csrc", "**", "*.*"), recursive=True))
    with_cuda = os.environ.get("FORCE_CUDA", "0") == "1" or (torch.cuda.is_available() and torch.version.cuda)
    openmp = ["-fopenmp"]
    # torch >= 2.14 headers require C++20 (ATen.h: "#error C++20 or later"); older torch builds with C++17.
    tv = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    std = "-std=c++20" if tv >= (2, 14) else "-std=c++17"
    # -fno-trapping-math (as torch itself is built) lets GCC vectorise the clamped erf/exp loops of the CPU kernels.
    # -g0: no debug info (Python's CFLAGS carry -g): the heaviest translation unit compiles 27% faster.
    cxx = ["-O3", std, "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-g0"] + openmp
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if x86 and os.environ.get("EIMN_NATIVE", "0") != "1":
        levels = CPU_LEVELS
        macros = [("EIMN_MULTI_ISA", None), ("EIMN_ISA", "base")]
        cpu_sources = base_sources
    else:  # one level, "native": this machine's ISA (EIMN_NATIVE=1), or any other architecture's default
        levels = {}
        macros = []
        cpu_sources = base_sources + kernel_sources
        if x86:
            cxx += ["-march=native"] + CPU_LEVELS["avx512"][2:]
    include_dirs = [os.path.join(ROOT, "csrc")]  # includes are spelled from csrc/: "cpu/...", "cuda/...", "common/..."
    if with_cuda and cuda_sources:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;8.6;8.9;9.0"
        ext = CUDAExtension(
            "eimn_kernels._C", cpu_sources + cuda_sources, include_dirs=include_dirs, depends=depends,
            define_macros=[("EIMN_WITH_CUDA", None)] + macros, extra_link_args=openmp,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", std, "--use_fast_math",
                                                      "-U__CUDA_NO_HALF_OPERATORS__",
                                                      "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                                                      "-U__CUDA_NO_HALF_CONVERSIONS__", "-lineinfo"]})
    else:
        ext = CppExtension("eimn_kernels._C", cpu_sources, include_dirs=include_dirs, depends=depends,
                           define_macros=macros, extra_compile_args={"cxx": cxx}, extra_link_args=openmp)
    ext.eimn_cpu_levels = [(name, flags, kernel_sources) for name, flags in levels.items()]
    return [ext]


def cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    class BuildWithCPULevels(BuildExtension):
        """BuildExtension that first compiles the CPU kernel sources once per ISA level (ext.eimn_cpu_levels: name,
        flags after the common ones, sources) into build_temp/isa_<name> and links those objects after the
        extension's own, lowest level first."""

        def build_extension(self, ext):
            objects = []
            for name, flags, sources in getattr(ext, "eimn_cpu_levels", []):
                args = dict(ext.extra_compile_args)
                args["cxx"] = list(args["cxx"]) + flags
                macros = [m for m in ext.define_macros if m[0] != "EIMN_ISA"] + [("EIMN_ISA", name)]
                objects += self.compiler.compile(sources, output_dir=os.path.join(self.build_temp, f"isa_{name}"),
                                                 macros=macros, include_dirs=ext.include_dirs, debug=self.debug,
                                                 extra_postargs=args, depends=ext.depends)
            ext.extra_objects = list(ext.extra_objects or []) + objects
            super().build_extension(ext)

    return {"build_ext": BuildWithCPULevels.with_options(use_ninja=True)}


setup(ext_modules=ext_modules(), cmdclass=cmdclass())
