#!/usr/bin/env bash
# Create (or reuse) the venv .venv with the CPU torch wheel and build eimn_kernels._C in place.
# Usage: bash scripts/setup_env.sh        (idempotent; PYTHON=python3.11 to choose the interpreter; EIMN_PEERS=1
#        also installs OpenVINO for the benchmark's peer rows; EIMN_NATIVE=1 builds one -march=native level)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING' || true
# torch pinned to the CPU wheel (2.13.0, on disk here): never let a bare 'torch' pull the CUDA build.
python -m pip install -q "torch==2.13.0" 2>&1 | grep -v '^WARNING' || true
python -m pip install -q triton numpy pytest ninja pybind11 pillow tqdm pypng tifffile matplotlib safetensors \
  "setuptools>=77" wheel 2>&1 | grep -v '^WARNING' || true
# Optional, for the ONNX export and its check against ONNX Runtime, and the spandrel architecture. spandrel without
# its dependencies: they name torch and torchvision, and resolving those would replace the CPU torch.
python -m pip install -q onnx onnxscript onnxruntime einops 2>&1 | grep -v '^WARNING' || true
python -m pip install -q --no-deps spandrel 2>&1 | grep -v '^WARNING' || true
# The benchmark's peers (benchmarks.model --peers, a full benchmarks.run on CPU): OpenVINO beside ONNX Runtime.
# Opt-in (EIMN_PEERS=1): a 60 MB wheel that the tests do not need.
if [ "${EIMN_PEERS:-0}" = "1" ]; then
  python -m pip install -q openvino 2>&1 | grep -v '^WARNING' || true
fi
python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
# Build the C++ extension (CPU kernels; CUDA kernels too with FORCE_CUDA=1 and CUDA_HOME set).
MAX_JOBS=${MAX_JOBS:-2} python setup.py build_ext --inplace > build.log 2>&1 || { tail -40 build.log; exit 1; }
python -c "import eimn_kernels as ek; print('eimn_kernels backends on cpu:', ek.available_backends('cpu'))"
