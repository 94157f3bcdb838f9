#!/usr/bin/env bash
# Compile-check the CUDA sources without a GPU:
#  1. every torch-free csrc/cuda/*.cu with nvcc for sm_80 and sm_90;
#  2. every ATen wrapper csrc/cuda/*.cpp with g++ -fsyntax-only against the installed torch headers + CUDA headers.
# CUDA_HOME defaults to /usr/local/cuda-13.0 (the `nvcc` on PATH may be a wrapper script).
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda-13.0}
NVCC="$CUDA_HOME/bin/nvcc"
shopt -s nullglob
cu=(csrc/cuda/*.cu)
if [ ${#cu[@]} -eq 0 ]; then echo "check_cuda_compile: no .cu files"; exit 0; fi
if [ ! -x "$NVCC" ]; then echo "check_cuda_compile: nvcc not found at $NVCC (set CUDA_HOME)"; exit 1; fi
out=$(mktemp -d)
for f in "${cu[@]}"; do
  echo "nvcc sm_80+sm_90: $f"
  "$NVCC" -std=c++17 -O3 -Xcompiler -Wall -Icsrc \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -c "$f" -o "$out/$(basename "$f").o"
done
PY=${PYTHON:-python}
TORCH_INC=$("$PY" -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I'+p for p in include_paths()))")
PY_INC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
# The CPU torch wheel ships the c10/cuda headers but not the generated cuda_cmake_macros.h: supply a stand-in.
shim="$out/shim"
if ! "$PY" -c "import os,sys; from torch.utils.cpp_extension import include_paths; sys.exit(0 if any(os.path.exists(os.path.join(p,'c10/cuda/impl/cuda_cmake_macros.h')) for p in include_paths()) else 1)"; then
  mkdir -p "$shim/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$shim/c10/cuda/impl/cuda_cmake_macros.h"
fi
for f in csrc/cuda/*.cpp; do
  echo "g++ -fsyntax-only (ATen CUDA wrapper): $f"
  g++ -std=c++20 -fsyntax-only -DEIMN_WITH_CUDA -DUSE_CUDA $TORCH_INC -I"$shim" -I"$PY_INC" -I"$CUDA_HOME/include" \
    -Icsrc "$f"
done
rm -rf "$out"
echo "check_cuda_compile: OK (${#cu[@]} .cu files)"
