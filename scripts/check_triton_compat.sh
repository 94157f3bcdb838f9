#!/usr/bin/env bash
# Compile every Triton kernel to sm_90 PTX (no GPU needed) with other Triton releases than the venv's, so a kernel
# that only the newest Triton accepts is caught here, not on a lent GPU. 3.6.0 is what torch 2.11 (the GPU image
# of 2026-11) pins; the first H100 run found two such kernels (a static-if with two returns of different shapes,
# fp64 tl.dot without out_dtype). Each release is pip-installed (--no-deps) into build/triton-<v> and put first on
# PYTHONPATH for the two compile tests.
# Usage: bash scripts/check_triton_compat.sh        (TRITON_COMPAT_VERSIONS="3.6.0 ..." to choose; "" skips)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
VERSIONS=${TRITON_COMPAT_VERSIONS-3.6.0}
for v in $VERSIONS; do
  dir="build/triton-$v"
  if [ ! -f "$dir/.ok" ]; then
    rm -rf "$dir"
    "$PY" -m pip install -q --no-deps --target "$dir" "triton==$v" 2>&1 | grep -v '^WARNING' || true
    [ -d "$dir/triton" ] || { echo "check_triton_compat: could not install triton==$v (skipped)"; continue; }
    touch "$dir/.ok"
  fi
  got=$(PYTHONPATH="$PWD/$dir${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "import triton; print(triton.__version__)")
  echo "check_triton_compat: Triton $got"
  PYTHONPATH="$PWD/$dir${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest -q -p no:cacheprovider \
    "tests/test_triton_molrcm.py::test_compiles_for_sm90" "tests/test_triton_sadffm.py::test_compile_sm90_ptx"
done
